"""What a testbed instance is: topology, pace, memory sizes and switched-on defects."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from omnitrace.errors import OmnitraceError

# name -> what it breaks, and the upstream bug it reproduces.
DEFECTS = {
    "orphan-stages": "stages skip PR_SET_PDEATHSIG and outlive a SIGKILLed server (#3725, vllm #43060)",
    "slow-release": "a stage's GPU memory is freed 5 s after it exits, not at exit (real GPUs: a "
                    "forked child holds its CUDA context that long)",
    "hang-inflight": "on SIGTERM/SIGINT the engine stops but in-flight requests are never failed: "
                     "uvicorn waits for their connections forever (#3683)",
    "exit-on-oom": "an allocation failure kills the stage and the whole server exits (#4285)",
    "healthy-under-oom": "under OOM /health and chat answer 200 (chat with an empty completion)",
    "speech-400-under-oom": "under OOM /v1/audio/speech answers 400 instead of a 5xx (#4285 follow-up)",
    "ignore-sigterm": "stage 0 ignores SIGTERM (it still exits when its pipe to the server closes)",
    "zombie-stage": "a dead stage is never reaped: it stays a zombie while the server lives",
    "stale-health": "/health stays 200 after a stage died (requests still fail)",
    "hang-on-stage-death": "in-flight requests are not failed when a stage dies: they hang (#3683)",
    # abnormal input (the matrix's abnormal-input/* rows; omnitrace/testbed/bad_input.py)
    "500-on-bad-input": "a bad chat request (malformed JSON, wrong types, ...) is answered 500, "
                        "not 4xx: the handler raised instead of refusing it",
    "crash-on-bad-input": "a bad chat request reaches the engine and its first stage dies of it "
                          "(answered 500; /health 503 and every later request fails)",
    "fastapi-error-body": "a chat body that is not UTF-8 is refused with FastAPI's {\"detail\": "
                          "...} body, not the OpenAI error shape (as vLLM 0.32 answers it)",
    "orphan-keeps-device": "stage 0 takes 85 % of its device (vLLM's gpu_memory_utilization) and "
                           "its stages outlive a SIGKILLed server: a restarted server cannot get "
                           "the memory and exits at start-up (vllm#55510, #19849, #21915)",
}
# orphan-keeps-device: stage 0's share of its device. Its own engine steps (10 % of the device)
# still fit beside it; a second stage 0 does not.
ORPHAN_DEVICE_SHARE = 0.85

SLOW_RELEASE_S = 5.0


@dataclass(frozen=True)
class StageSpec:
    index: int
    title: str
    device: int
    produces: str    # "text" (thinker, diffusion), "codec" (talker), "audio" (code2wav)


# Qwen3-Omni: thinker on GPU 0, talker and code2wav on GPU 1 (as the reference deploy config).
TOPOLOGIES = {
    "qwen3-omni": [
        StageSpec(0, "VLLM::StageEngineCoreProc_thinker_replica0_DP0", 0, "text"),
        StageSpec(1, "VLLM::StageEngineCoreProc_talker_replica0_DP0", 1, "codec"),
        StageSpec(2, "VLLM::StageEngineCoreProc_code2wav_replica0_DP0", 1, "audio"),
    ],
    "wan22": [StageSpec(0, "vLLM-Omni::DiffusionWorker-0", 0, "text")],
}

MODEL_NAMES = {"qwen3-omni": "Qwen/Qwen3-Omni-30B-A3B-Instruct", "wan22": "Wan-AI/Wan2.2-T2V-A14B"}


@dataclass(frozen=True)
class TestbedConfig:
    topology: str = "qwen3-omni"
    defects: frozenset[str] = field(default_factory=frozenset)
    tokens_per_s: float = 20.0
    stage_mem: int = 2 << 30     # held by each stage from start to exit (weights + KV cache)
    # Taken and given back by a stage around every engine step: bytes, or else this share of the
    # device's total. 10 % is more than an OOM hog leaves (it takes 92-95 % of what is free).
    step_mem: int | None = None
    step_mem_fraction: float = 0.10
    heartbeat_s: float = 0.2     # an idle stage still steps this often, so OOM shows when idle

    @property
    def stages(self) -> list[StageSpec]:
        return TOPOLOGIES[self.topology]

    @property
    def model(self) -> str:
        return MODEL_NAMES[self.topology]

    def has(self, defect: str) -> bool:
        return defect in self.defects

    @property
    def orphans(self) -> bool:
        """Stages without a parent-death path: they outlive a SIGKILLed server."""
        return self.has("orphan-stages") or self.has("orphan-keeps-device")


def check_defects(names) -> frozenset[str]:
    unknown = sorted(set(names) - set(DEFECTS))
    if unknown:
        raise OmnitraceError(f"unknown defect {', '.join(unknown)}; "
                             f"`omnitrace testbed defects` lists the known ones")
    return frozenset(names)


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_share(text: str, option: str) -> tuple[int | None, float]:
    """'10%' -> (None, 0.1); a size -> (bytes, 0): for options that take either."""
    if text.strip().endswith("%"):
        try:
            return None, float(text.strip()[:-1]) / 100
        except ValueError:
            raise OmnitraceError(f"{option} {text!r} is not a percentage; write e.g. 10%") from None
    return parse_size(text, option), 0.0


def parse_size(text: str, option: str) -> int:
    """'2GiB', '512MiB', '1.5G', '1048576' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise OmnitraceError(f"{option} {text!r} is not a size; write e.g. 2GiB, 512MiB or 1048576")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
