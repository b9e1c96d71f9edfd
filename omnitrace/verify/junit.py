"""JUnit XML for CI: one testcase per scenario x rule; fail -> <failure>, inconclusive -> <skipped>
(or <failure> with strict, matching the exit status)."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from omnitrace.verify.report import Report
from omnitrace.verify.rules.base import FAIL, INCONCLUSIVE


def to_junit(report: Report, strict: bool = False) -> str:
    counts = report.counts()
    suites = ET.Element("testsuites", name="omnitrace verify")
    suite = ET.SubElement(suites, "testsuite", name=f"matrix {report.matrix}",
                          tests=str(sum(counts.values())),
                          failures=str(counts[FAIL] + (counts[INCONCLUSIVE] if strict else 0)),
                          skipped=str(0 if strict else counts[INCONCLUSIVE]), errors="0")
    for s in report.scenarios:
        for r in s.rules:
            case = ET.SubElement(suite, "testcase", classname=s.id, name=r.id,
                                 time=f"{r.measured:.6f}" if r.measured is not None and r.unit == "s"
                                 else "0")
            text = "\n".join(e.text for e in r.evidence)
            measured = f"measured {r.measured} {r.unit}, threshold {r.threshold} {r.unit}"
            if r.verdict == FAIL or (r.verdict == INCONCLUSIVE and strict):
                node = ET.SubElement(case, "failure", message=f"{r.verdict}: {r.summary} ({measured})",
                                     type=r.verdict)
                node.text = text
            elif r.verdict == INCONCLUSIVE:
                ET.SubElement(case, "skipped", message=f"inconclusive: {r.summary}")
            out = ET.SubElement(case, "system-out")
            out.text = f"{r.summary} ({measured})\n{text}"
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"
