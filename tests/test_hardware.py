"""The CPU facts every run records (`hfcompress.hardware`): a speedup is read against the machine it came from."""

import builtins
import io

from hfcompress import hardware
from hfcompress.report.record import environment

CPUINFO = """processor\t: 0
model name\t: Some Xeon(R) CPU
flags\t\t: fpu sse avx2 fma avx512f avx512bw avx512_vnni amx_tile
"""


def _cpuinfo(monkeypatch, text):
    real_open = builtins.open

    def fake(path, *a, **k):
        if path == "/proc/cpuinfo":
            if text is None:
                raise FileNotFoundError(path)
            return io.StringIO(text)
        return real_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake)
    hardware.cpu_info.cache_clear()


def test_cpu_model_and_speed_flags_are_read_and_recorded(monkeypatch):
    _cpuinfo(monkeypatch, CPUINFO)
    try:
        assert hardware.cpu_info() == {"model": "Some Xeon(R) CPU",
                                       "flags": ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_tile"]}
        assert hardware.cpu_has_vnni() is True
        assert environment()["cpu"]["model"] == "Some Xeon(R) CPU"
        _cpuinfo(monkeypatch, CPUINFO.replace(" avx512_vnni", ""))
        assert hardware.cpu_has_vnni() is False and "avx512_vnni" not in hardware.cpu_info()["flags"]
        _cpuinfo(monkeypatch, None)  # not Linux: nothing is assumed missing
        assert hardware.cpu_info()["flags"] is None and hardware.cpu_has_vnni() is True
    finally:
        hardware.cpu_info.cache_clear()
