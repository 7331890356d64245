#!/usr/bin/env python3
"""Time NVIDIA's official Cosmos Tokenizer PyTorch code on the CPU, beside `tokenscope bench`.

The official code is not part of this repository: pass a checkout of
https://github.com/NVIDIA/Cosmos-Tokenizer with --cosmos. Like `tokenscope bench`, it builds the
full-size network of a released variant with random weights and times the inference path NVIDIA
ships (`encoder_jit` then `decoder_jit`, under `torch.no_grad`, float32), then prints one JSON
line with the medians and the process's peak RSS. Run both tools on the same machine, one after
the other with nothing else running, and compare ratios, not absolute times.

    pip install torch einops loguru numpy
    python3 bench/official_pytorch.py --cosmos ~/Cosmos-Tokenizer \
        --variant CV8x8x8 --input-shape 1x3x17x720x1280 --runs 1 --warmup 0 --threads 2
"""

import argparse
import json
import re
import resource
import statistics
import sys
import time


def parse_variant(name):
    """`CV8x8x8` -> ("CV", temporal 8, spatial 8); `DI16x16` -> ("DI", 1, 16)."""
    match = re.fullmatch(r"(CI|DI|CV|DV)(?:(\d+)x)?(\d+)x(\d+)", name)
    if not match:
        sys.exit(f"unknown variant `{name}`: expected e.g. CV8x8x8, DV4x8x8, CI8x8, DI16x16")
    family, temporal, spatial, spatial2 = match.groups()
    if spatial != spatial2:
        sys.exit(f"`{name}`: the two spatial factors must be equal")
    if (family[1] == "V") != (temporal is not None):
        sys.exit(f"`{name}`: video variants name three factors, image variants two")
    return family, int(temporal or 1), int(spatial)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cosmos", required=True, help="checkout of NVIDIA/Cosmos-Tokenizer")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--input-shape", required=True, help="e.g. 1x3x17x720x1280")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    sys.path.insert(0, args.cosmos)
    import torch
    from cosmos_tokenizer.networks import TokenizerConfigs, TokenizerModels

    torch.set_num_threads(args.threads)
    family, temporal, spatial = parse_variant(args.variant)
    config = dict(TokenizerConfigs[family].value)
    config.update(spatial_compression=spatial)
    if family[1] == "V":
        config.update(temporal_compression=temporal)
    model = TokenizerModels[family].value(**config).eval()
    encoder, decoder = model.encoder_jit(), model.decoder_jit()

    dims = [int(d) for d in args.input_shape.lower().split("x")]
    x = torch.rand(dims) * 2 - 1
    encode_s, decode_s = [], []
    with torch.no_grad():
        for run in range(args.warmup + args.runs):
            started = time.perf_counter()
            out = encoder(x)
            latent = out if isinstance(out, torch.Tensor) else out[0]
            encode = time.perf_counter() - started
            started = time.perf_counter()
            recon = decoder(latent)
            decode = time.perf_counter() - started
            del recon, out, latent
            if run >= args.warmup:
                encode_s.append(encode)
                decode_s.append(decode)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "tool": "official PyTorch",
                "torch": torch.__version__,
                "variant": args.variant,
                "input_shape": dims,
                "threads": args.threads,
                "runs": args.runs,
                "warmup_runs": args.warmup,
                "encode_s": encode_s,
                "decode_s": decode_s,
                "encode_s_median": statistics.median(encode_s),
                "decode_s_median": statistics.median(decode_s),
                "total_s_median": statistics.median(e + d for e, d in zip(encode_s, decode_s)),
                "peak_rss_bytes": peak,
            }
        )
    )


if __name__ == "__main__":
    main()
