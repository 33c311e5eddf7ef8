#!/usr/bin/env python3
"""A team's own extractor for SAP FBL3N G/L line-item exports, built on openpyxl.

Run by etlq unchanged as a command extractor (see README, "Bring your own extractor"):

    python3 fbl3n_openpyxl.py INPUT.xlsx OUTPUT.json

It finds the header row (the one holding "Document Number"), and writes every row below it as
an object keyed by the header texts, under "rows". Values are written as openpyxl reads them:
numbers as JSON numbers, dates as "YYYY-MM-DD HH:MM:SS", text as text; etlq types them with the
connector's columns.
"""

import json
import sys

import openpyxl


def main(src, dst):
    wb = openpyxl.load_workbook(src, read_only=True, data_only=True)
    ws = wb["GL"]
    header = None
    rows = []
    for values in ws.iter_rows(values_only=True):
        if header is None:
            if "Document Number" in values:
                header = [str(v).strip() if v is not None else None for v in values]
            continue
        record = {}
        for key, value in zip(header, values):
            if key is None or value is None:
                continue
            if hasattr(value, "isoformat"):
                value = str(value)
            record[key] = value
        if record:
            rows.append(record)
    if header is None:
        sys.exit("no header row with 'Document Number' in sheet GL")
    with open(dst, "w", encoding="utf-8") as out:
        json.dump({"source": src, "rows": rows}, out, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
