"""Exporters: each module turns a Timeline (or verify's report) into one outside format.

    live_metrics  LiveMetrics: Prometheus metrics served while recording
    prometheus    verdict metrics: node_exporter textfile, Pushgateway
    perfetto      Chrome trace-event JSON for ui.perfetto.dev
    otlp          OpenTelemetry spans and logs: OTLP/HTTP or the OTLP JSON file format
    html          one self-contained HTML report
"""
