"""Process lifetimes, GPU series, HTTP requests and marks rebuilt from a Timeline.

    model = build_model(timeline)
    roles = assign_roles(model, server, patterns)
    scenarios = find_scenarios(model, patterns)
"""
from omnitrace.model.build import build_model
from omnitrace.model.model import Model
from omnitrace.model.process import Process

__all__ = ["build_model", "Model", "Process"]
