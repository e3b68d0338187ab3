#!/usr/bin/env python3
"""Compares NCA's connectivity report with `policyc matrix --ports all -o json`, cell by cell.

    nca --connectivity -r DIR -o txt_no_fw_rules -f nca.txt
    policyc matrix -f DIR --ports all -o json > policyc.json
    e2e/nca-cells.py nca.txt policyc.json

For every port (class) of policyc's answer, at its first port, and every ordered pair of distinct
pods: whether NCA lists the connection. Prints how many cells differ and the first few.
Exit status 1 when some differ.
"""
import json
import re
import sys


def nca_pairs(path):
    """(source pod, destination pod) -> NCA's connection text (a pair may have several lines)."""
    text = open(path).read()
    pair = re.compile(
        r"([\w.-]+/[\w.-]+)\[Pod\] => ([\w.-]+/[\w.-]+)\[Pod\] : "
        r"(All connections|No connections|(?:\{[^}]*\},?)+)"
    )
    out = {}
    for m in pair.finditer(text):
        s, d, conn = m.groups()
        out[(s, d)] = out.get((s, d), "") + conn
    return out


def allows(conn, protocol, port):
    if not conn:
        return False
    if "All connections" in conn:
        return True
    for block in re.findall(r"\{([^}]*)\}", conn):
        p = re.search(r"protocols:([A-Z, ]+)", block)
        if p and protocol not in [x.strip() for x in p.group(1).split(",")]:
            continue
        ports = re.search(r"dst_ports:([0-9,\-]+)", block)
        if not ports:
            return True
        for part in ports.group(1).split(","):
            a, _, b = part.partition("-")
            if int(a) <= port <= int(b or a):
                return True
    return False


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    nca = nca_pairs(sys.argv[1])
    ours = json.load(open(sys.argv[2]))
    cells = differ = 0
    for label, m in ours.items():
        ports, protocol = label.rsplit("/", 1)
        port = int(re.split(r"[-,]", ports)[0])
        pods = m["pods"]
        for i, s in enumerate(pods):
            for j, d in enumerate(pods):
                if s == d:
                    continue
                cells += 1
                a, b = m["allowed"][i][j], allows(nca.get((s, d)), protocol, port)
                if a != b:
                    differ += 1
                    if differ <= 10:
                        print(f"{label} {s} -> {d}: policyc {a}, NCA {b} ({nca.get((s, d))})")
    print(f"{cells} cells over {len(ours)} ports: {differ} differ")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
