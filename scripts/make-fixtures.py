#!/usr/bin/env python3
"""Writes the legacy-format (.xls) test fixtures under tests/fixtures/ (needs xlwt from PyPI:
`python3 -m pip install xlwt==1.3.0`). The files are committed; this script documents how they
were made. Rust writes every other test workbook itself (rust_xlsxwriter, zip)."""
import datetime
import os
import struct

import xlwt

HERE = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")

HEADER = ["Account", "Account Name", "Period End", "Opening Balance", "Debit", "Credit",
          "Closing Balance", "Active"]


def trial_balance(path, extra_cells=()):
    wb = xlwt.Workbook()
    ws = wb.add_sheet("TB")
    for c, h in enumerate(HEADER):
        ws.write(0, c, h)
    date = xlwt.easyxf(num_format_str="YYYY-MM-DD")
    for r in range(1, 6):
        ws.write(r, 0, f"{4000 + r}")
        ws.write(r, 1, f"Account {r}")
        ws.write(r, 2, datetime.date(2025, 12, 31), date)
        ws.write(r, 3, 100.0 * r)
        ws.write(r, 4, 10.5)
        ws.write(r, 5, 0.5)
        ws.write(r, 6, 100.0 * r + 10.0)
        ws.write(r, 7, "Y")
    for (r, c, v) in extra_cells:
        ws.write(r, c, v)
    wb.save(path)


def forge_dimensions(src, dst):
    """The DIMENSIONS record (type 0x0200, 14 bytes in BIFF8) claims 4,294,967,295 rows and
    65,535 columns: calamine reserves memory for that many cells before reading one."""
    data = bytearray(open(src, "rb").read())
    marker = struct.pack("<HH", 0x0200, 14)
    at = data.find(marker)
    assert at > 0, "no DIMENSIONS record"
    data[at + 4:at + 18] = struct.pack("<IIHHH", 0, 0xFFFFFFFF, 0, 0xFFFF, 0)
    assert data.find(marker, at + 1) < 0, "one sheet, one record"
    open(dst, "wb").write(bytes(data))


os.makedirs(HERE, exist_ok=True)
tb = os.path.join(HERE, "trial_balance.xls")
trial_balance(tb)
forge_dimensions(tb, os.path.join(HERE, "forged_dimensions.xls"))
# Two cells at opposite corners of a BIFF8 sheet: calamine's dense range for them is
# 65,536 × 256 cells (~0.5 GB) — memory that follows the used range, not the cells present.
trial_balance(os.path.join(HERE, "far_corners.xls"), extra_cells=[(65535, 255, "far away")])
