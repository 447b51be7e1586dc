"""Parses a Prometheus text-format file with prometheus_client's own parser (the one Python exporters and
tools use) and prints it as JSON, so tests/ops_e2e.rs can assert on real parsed values.

Usage: parse_metrics.py FILE  ->  {"families": [{"name", "type", "help", "samples": [{"name", "labels", "value"}]}]}
Exits 1 with the parser's complaint if the file is not valid text format, or if a family lacks HELP or TYPE.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = open(sys.argv[1], encoding="utf-8").read()
    families = []
    try:
        for family in text_string_to_metric_families(text):
            if family.type == "unknown" or not family.documentation:
                print(f"{family.name}: no TYPE or HELP line", file=sys.stderr)
                return 1
            families.append(
                {
                    "name": family.name,
                    "type": family.type,
                    "help": family.documentation,
                    "samples": [
                        {"name": s.name, "labels": s.labels, "value": s.value}
                        for s in family.samples
                    ],
                }
            )
    except ValueError as e:
        print(f"not valid Prometheus text format: {e}", file=sys.stderr)
        return 1
    json.dump({"families": families}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
