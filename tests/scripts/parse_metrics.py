"""Parses a metrics exposition with Prometheus's own Python client and prints its samples as
JSON: [{"name", "labels", "value"}]. argv: FILE text|openmetrics."""
import json, sys
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

text = open(sys.argv[1]).read()
parse = parse_openmetrics if sys.argv[2] == "openmetrics" else parse_text
samples = []
for family in parse(text):
    for sample in family.samples:
        samples.append({"name": sample.name, "labels": sample.labels, "value": sample.value,
                        "type": family.type})
print(json.dumps(samples))
