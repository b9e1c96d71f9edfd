"""A miniature `vllm serve --omni`: the system under test for omnitrace's demos, tests and matrix.

    config.py        the testbed's settings, topologies and known defects (picklable: stages get it)
    stage.py         a stage process: holds GPU memory, produces tokens / audio, shuts down
    orchestrator.py  the API server's side of the stages: spawn, route, notice deaths, shut down
    server.py        FastAPI app on uvicorn, signal handling, the READY line
    logs.py          log lines shaped like the real server's
    cli.py           `omnitrace testbed serve|defects`

See docs/testbed.md for behaviour, row by row of the matrix.
"""
