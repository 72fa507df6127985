"""EnergyMeter: validation, how codecarbon's CPU mode becomes 'measured' or 'estimated', combining sessions."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from ragkit.errors import InputError
from ragkit.tokenomics.carbon import EnergyMeter, combine_readings


def test_bad_settings() -> None:
    with pytest.raises(InputError, match="ISO 3166 alpha-3"):
        EnergyMeter(country_iso_code="France")
    with pytest.raises(InputError, match="0 or more gCO2e/kWh"):
        EnergyMeter(grid_g_per_kwh=-1)
    with pytest.raises(InputError, match="tracking mode"):
        EnergyMeter(tracking_mode="gpu")


def _fake_codecarbon(monkeypatch: pytest.MonkeyPatch, cpu_mode: str) -> list[dict[str, Any]]:
    made: list[dict[str, Any]] = []

    class CPU:
        _mode = cpu_mode

    class Tracker:
        def __init__(self, **kw: Any) -> None:
            made.append(kw)
            self._hardware = [CPU()]
            self.final_emissions_data = types.SimpleNamespace(energy_consumed=0.002, cpu_energy=0.0015, ram_energy=0.0005, gpu_energy=0.0)

        def start(self) -> None:
            pass

        def stop(self) -> float:
            return 0.002 * (self_kw.get("force_carbon_intensity_g_co2e_kwh") or 100) / 1000

    mod = types.ModuleType("codecarbon")
    mod.__version__ = "0-fake"  # type: ignore[attr-defined]
    mod.OfflineEmissionsTracker = Tracker  # type: ignore[attr-defined]
    self_kw: dict[str, Any] = {}
    orig = Tracker.__init__

    def init(self: Any, **kw: Any) -> None:
        self_kw.update(kw)
        orig(self, **kw)

    Tracker.__init__ = init  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, "codecarbon", mod)
    return made


@pytest.mark.parametrize(("mode", "basis"), [("intel_rapl", "measured"), ("cpu_load", "estimated"), ("constant", "estimated")])
def test_basis_follows_codecarbons_cpu_mode(monkeypatch: pytest.MonkeyPatch, mode: str, basis: str) -> None:
    made = _fake_codecarbon(monkeypatch, mode)
    with EnergyMeter(country_iso_code="fra", grid_g_per_kwh=50) as m:
        pass
    assert made[0]["country_iso_code"] == "FRA" and made[0]["force_carbon_intensity_g_co2e_kwh"] == 50 and made[0]["output_methods"] == []
    r = m.reading
    assert r is not None and r.basis == basis and r.cpu_method == mode
    assert r.kwh == 0.002 and r.kg_co2e == pytest.approx(0.0001) and r.grid_g_per_kwh == pytest.approx(50)


def test_missing_codecarbon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(ImportError, match=r"--no-carbon.*pip install 'ragkit\[eval\]'"):
        with EnergyMeter():
            pass


def test_combine_sessions() -> None:
    a = {"kwh": 0.001, "kg_co2e": 0.0004, "seconds": 10.0, "items": 3, "basis": "measured", "cpu_method": "intel_rapl", "ram_method": "estimated"}
    b = {**a, "items": 2, "basis": "estimated", "cpu_method": "cpu_load"}
    c = combine_readings([a, b])
    assert c is not None and c["kwh"] == 0.002 and c["items"] == 5 and c["sessions"] == 2
    assert c["basis"] == "estimated" and c["grid_g_per_kwh"] == pytest.approx(400)  # measured only when every session was
    assert combine_readings([a])["basis"] == "measured" and combine_readings([]) is None  # type: ignore[index]
