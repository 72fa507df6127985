"""Energy and CO2 of a run, through codecarbon's :class:`OfflineEmissionsTracker` (no network).

Each reading says how it was obtained. ``measured`` means codecarbon read energy counters (Intel/AMD
RAPL under ``/sys/class/powercap``, Apple ``powermetrics``, Windows EMI, or a GPU through NVML) for the
processor; ``estimated`` means it fell back to a power model: the CPU's TDP (or a generic 4 W per
thread when it does not know the model) scaled by the CPU load, and always for RAM (a fixed power per
installed memory). Tools that assume peak power overstate the footprint, so the basis is reported
with every figure, never hidden.

Grid intensity: with ``country_iso_code`` (ISO 3166 alpha-3, e.g. ``FRA``) and, for USA/CAN/CHN and
the Nordics, ``region``, codecarbon applies that grid's mix from its bundled tables; ``grid_g_per_kwh``
overrides it; with neither, the world average of codecarbon's tables is used.

Example:
    >>> from ragkit.tokenomics.carbon import EnergyMeter
    >>> meter = EnergyMeter(country_iso_code="FRA")  # cheap: codecarbon starts in __enter__
    >>> meter.country_iso_code
    'FRA'
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from ragkit.errors import InputError, MissingDependencyError

logger = logging.getLogger(__name__)

__all__ = ["EnergyReading", "EnergyMeter", "MEASURED_CPU_MODES", "combine_readings"]

MEASURED_CPU_MODES = frozenset({"intel_rapl", "intel_power_gadget", "windows_emi", "apple_powermetrics", "powermetrics"})
"""codecarbon CPU modes that read hardware energy counters rather than a power model."""


@dataclass
class EnergyReading:
    """Energy and emissions of one measured span."""

    kwh: float
    kg_co2e: float
    seconds: float
    basis: str
    """``measured`` when the processor's energy came from hardware counters, else ``estimated``."""
    cpu_method: str
    ram_method: str
    gpu_method: str | None
    cpu_kwh: float
    ram_kwh: float
    gpu_kwh: float
    country_iso_code: str | None
    region: str | None
    grid_g_per_kwh: float | None
    """The intensity applied (kgCO2e / kWh x 1000), as codecarbon used it."""
    items: int = 0
    """Questions run during the span (the figures are divided by this for per-question costs)."""
    tracker: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def combine_readings(readings: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The sum of several readings (sessions of a resumed run); ``measured`` only if all were."""
    if not readings:
        return None
    kwh = sum(r["kwh"] for r in readings)
    kg = sum(r["kg_co2e"] for r in readings)
    return {
        "kwh": kwh,
        "kg_co2e": kg,
        "seconds": sum(r["seconds"] for r in readings),
        "items": sum(r.get("items", 0) for r in readings),
        "basis": "measured" if all(r["basis"] == "measured" for r in readings) else "estimated",
        "cpu_method": ",".join(sorted({r["cpu_method"] for r in readings})),
        "ram_method": ",".join(sorted({r["ram_method"] for r in readings})),
        "cpu_kwh": sum(r.get("cpu_kwh", 0.0) for r in readings),
        "ram_kwh": sum(r.get("ram_kwh", 0.0) for r in readings),
        "gpu_kwh": sum(r.get("gpu_kwh", 0.0) for r in readings),
        "country_iso_code": readings[-1].get("country_iso_code"),
        "region": readings[-1].get("region"),
        "grid_g_per_kwh": kg / kwh * 1000 if kwh else readings[-1].get("grid_g_per_kwh"),
        "sessions": len(readings),
    }


class EnergyMeter:
    """A context manager that measures the energy and CO2 of its block with codecarbon, offline.

    Args:
        country_iso_code: the grid's country (ISO 3166 alpha-3); None for codecarbon's world average.
        region: a region within USA, CAN, CHN or the Nordic countries (e.g. ``california``).
        grid_g_per_kwh: force this grid intensity (gCO2e per kWh) instead of the country's mix.
        tracking_mode: ``process`` (this process's CPU share: fair on a shared machine) or ``machine``.
    """

    def __init__(
        self,
        country_iso_code: str | None = None,
        region: str | None = None,
        grid_g_per_kwh: float | None = None,
        tracking_mode: str = "process",
    ) -> None:
        if country_iso_code is not None and (len(country_iso_code) != 3 or not country_iso_code.isalpha()):
            raise InputError(f"country code {country_iso_code!r} is not ISO 3166 alpha-3 (write e.g. FRA, USA, DEU)")
        if grid_g_per_kwh is not None and grid_g_per_kwh < 0:
            raise InputError(f"grid intensity must be 0 or more gCO2e/kWh, not {grid_g_per_kwh}")
        if tracking_mode not in ("process", "machine"):
            raise InputError(f"tracking mode {tracking_mode!r} is not 'process' or 'machine'")
        self.country_iso_code = country_iso_code.upper() if country_iso_code else None
        self.region = region.lower() if region else None
        self.grid_g_per_kwh = grid_g_per_kwh
        self.tracking_mode = tracking_mode
        self.reading: EnergyReading | None = None
        self._tracker: Any = None
        self._start = 0.0

    def _world_average(self) -> float:
        from codecarbon.input import DataSource

        return float(DataSource().get_carbon_intensity_per_source_data()["world_average"])

    def __enter__(self) -> EnergyMeter:
        try:
            import codecarbon
            from codecarbon import OfflineEmissionsTracker
        except ImportError:
            raise MissingDependencyError("codecarbon", "eval", "measuring energy and CO2 (or pass --no-carbon)") from None
        force = self.grid_g_per_kwh if self.grid_g_per_kwh is not None else (None if self.country_iso_code else self._world_average())
        kwargs: dict[str, Any] = {
            "country_iso_code": self.country_iso_code or "USA",  # only a placeholder when the intensity is forced
            "output_methods": [],  # no CSV, API or logger output: ragkit keeps the reading itself
            "log_level": "error",
            "tracking_mode": self.tracking_mode,
            "allow_multiple_runs": True,
            "measure_power_secs": 5,
        }
        if self.region:
            kwargs["region"] = self.region
        if force is not None:
            kwargs["force_carbon_intensity_g_co2e_kwh"] = force
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self._tracker = OfflineEmissionsTracker(**kwargs)
        self._version = codecarbon.__version__
        self._tracker.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is None:
            return
        kg = tracker.stop() or 0.0
        data = getattr(tracker, "final_emissions_data", None)
        if data is None:  # codecarbon swallows its own errors; it then has nothing to report
            logger.warning("codecarbon produced no reading for this run: energy and CO2 are not reported")
            return
        seconds = time.perf_counter() - self._start
        cpu_mode = gpu_mode = None
        for hw in getattr(tracker, "_hardware", []):
            name = type(hw).__name__
            if name == "CPU":
                cpu_mode = getattr(hw, "_mode", None)
            elif name == "GPU":
                gpu_mode = "nvml"
        kwh = float(data.energy_consumed) if data is not None else 0.0
        measured = cpu_mode in MEASURED_CPU_MODES
        self.reading = EnergyReading(
            kwh=kwh,
            kg_co2e=float(kg),
            seconds=seconds,
            basis="measured" if measured else "estimated",
            cpu_method=str(cpu_mode or "unknown"),
            ram_method="estimated (codecarbon RAM power model)",
            gpu_method=gpu_mode,
            cpu_kwh=float(getattr(data, "cpu_energy", 0.0) or 0.0),
            ram_kwh=float(getattr(data, "ram_energy", 0.0) or 0.0),
            gpu_kwh=float(getattr(data, "gpu_energy", 0.0) or 0.0),
            country_iso_code=self.country_iso_code,
            region=self.region,
            grid_g_per_kwh=(float(kg) / kwh * 1000) if kwh else self.grid_g_per_kwh,
            tracker=f"codecarbon {self._version} OfflineEmissionsTracker ({self.tracking_mode})",
        )
        if not measured:
            logger.info("energy is estimated: codecarbon found no hardware energy counters (CPU mode %s)", cpu_mode)
