#!/usr/bin/env python3
"""Formats the raw lines of benchmarks/machine-table.sh as its Markdown table (also to re-render a saved run):

  /usr/bin/python3 benchmarks/peers/machine_table.py RAW_FILE CHECKPOINT/config.json SHAPE
"""
import json, re, statistics, sys
raw, config, shape = sys.argv[1], json.load(open(sys.argv[2])), sys.argv[3]
lines = open(raw).read().splitlines()
cpu = next(l[4:] for l in lines if l.startswith("cpu "))
bandwidth = float(re.search(r"read_GBps=([\d.]+)", next(l for l in lines if l.startswith("membw"))).group(1))
def fields(line): return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
rows = {}
for l in lines:
    side, ours, theirs, rest = (l.split(" ", 3) + [""])[:4]
    if side in ("ours", "theirs"):
        rows.setdefault((ours, theirs), {"ours": [], "theirs": []})[side].append(fields(rest))
MIB = 1048576 / 1e6
embedding_share = config["vocab_size"] * config["hidden_size"]
print(f"{shape}, 2 threads; {cpu}; read bandwidth {bandwidth:.1f} GB/s (2 threads)\n")
print("| ours / llama.cpp | measure | ours | llama.cpp | ours ÷ llama.cpp | decode roofline, ours / llama.cpp |")
print("| --- | --- | --- | --- | --- | --- |")
for (ours, theirs), sides in rows.items():
    o = lambda k: statistics.median(r[k] for r in sides["ours"])
    t = lambda k: statistics.median(r[k] for r in sides["theirs"])
    their_bytes = t("size") * 1e6 * (1 - embedding_share / t("params"))
    roof = f"{bandwidth * 1e9 / (o('decode_bytes_mb') * 1e6):.1f} / {bandwidth * 1e9 / their_bytes:.1f} tok/s"
    name = f"{ours} / {theirs.upper()}"
    print(f"| {name} | decode tok/s | {o('decode_tok_s'):.2f} | {t('decode_tok_s_median'):.2f} | {o('decode_tok_s') / t('decode_tok_s_median'):.2f} | {roof} |")
    print(f"| {name} | prefill-512 tok/s | {o('prefill_tok_s'):.1f} | {t('prefill512_tok_s'):.1f} | {o('prefill_tok_s') / t('prefill512_tok_s'):.2f} | |")
    print(f"| {name} | load s (warm page cache) | {o('load_s'):.1f} | {t('load_s'):.1f} | {o('load_s') / t('load_s'):.2f} | |")
    # Both sides report VmHWM in MiB; shown in MB like the weights. llama.cpp's peak is the larger of its two runs
    # (decode, then prefill-512), since ours loads, prefills 512 tokens and decodes in one process.
    our_peak = o("peak_rss_mb") * MIB
    their_peak = statistics.median(max(r["peak_rss_MB"], r.get("prefill512_peak_rss_MB", 0)) for r in sides["theirs"]) * MIB
    print(f"| {name} | peak RSS MB | {our_peak:.0f} | {their_peak:.0f} | {our_peak / their_peak:.2f} | |")
    print(f"| {name} | weights MB | {o('weights_mb'):.0f} | {t('size'):.0f} | {o('weights_mb') / t('size'):.2f} | |")
kernels = next((l[8:] for l in lines if l.startswith("kernels ")), None)
if kernels: print(f"\nOur kernels: {kernels}.")
print(f"\n{len(next(iter(rows.values()))['ours'])} round(s); decode after a 64-token prompt, 32 tokens; raw lines in {raw}")
