"""GPU memory over time: per device (what the driver says is in use) and per process."""
from __future__ import annotations

from bisect import bisect_right
from itertools import islice
from dataclasses import dataclass, field


@dataclass(slots=True)
class Series:
    """A step function: the value holds from one sample to the next."""
    times: list[int] = field(default_factory=list)
    values: list[int] = field(default_factory=list)
    refs: list[int] = field(default_factory=list)
    # A window's cut (model/window.py) shares the recording's lists and reads only the samples
    # before this index: device series are the bulk of a recording, too big to copy per scenario.
    stop: int | None = None

    def add(self, t: int, value: int, ref: int) -> None:
        self.times.append(t)
        self.values.append(value)
        self.refs.append(ref)

    def _stop(self) -> int:
        return len(self.times) if self.stop is None else self.stop

    def at(self, t: int) -> tuple[int, int] | None:
        """(value, ref) of the last sample at or before t."""
        pos = bisect_right(self.times, t, 0, self._stop())
        return (self.values[pos - 1], self.refs[pos - 1]) if pos else None

    def samples_after(self, t: int):
        stop = self._stop()
        pos = bisect_right(self.times, t, 0, stop)
        return zip(self.times[pos:stop], self.values[pos:stop], self.refs[pos:stop])

    def held(self) -> bool:
        """Some sample above zero."""
        return any(islice(self.values, self._stop()))

    def until(self, t: int) -> Series:
        """The samples at or before t, sharing these lists."""
        return Series(self.times, self.values, self.refs, bisect_right(self.times, t, 0, self._stop()))


class GpuUsage:
    def __init__(self) -> None:
        self.devices: dict[int, Series] = {}
        self.totals: dict[int, int] = {}
        self.by_pid: dict[int, dict[int, Series]] = {}   # pid -> device -> bytes held

    # Device samples are the bulk of a long recording (every 1-10 ms): keep this path lean.
    def device_sample(self, device: int, t: int, used: int, total: int, ref: int) -> None:
        series = self.devices.get(device)
        if series is None:
            series = self.devices[device] = Series()
            self.totals[device] = total
        series.times.append(t)
        series.values.append(used)
        series.refs.append(ref)

    def process_sample(self, device: int, pid: int, t: int, used: int, ref: int) -> None:
        per_device = self.by_pid.setdefault(pid, {})
        series = per_device.get(device)
        if series is None:
            series = per_device[device] = Series()
        series.add(t, used, ref)

    def holders(self) -> set[int]:
        """Pids that held GPU memory at some point."""
        return {pid for pid, devs in self.by_pid.items() if any(s.held() for s in devs.values())}

    def held_at(self, pid: int, t: int) -> int:
        total = 0
        for series in self.by_pid.get(pid, {}).values():
            sample = series.at(t)
            if sample:
                total += sample[0]
        return total

    def devices_of(self, pids: set[int]) -> set[int]:
        return {dev for pid in pids for dev, s in self.by_pid.get(pid, {}).items() if s.held()}
