#!/usr/bin/env bash
# Install the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist) unless they are present.
set -uo pipefail
target=/usr/share/datasets/fashion-mnist
if [ -f "$target/t10k-images-idx3-ubyte.gz" ] || [ -f "$target/t10k-images-idx3-ubyte" ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1; then
    sudo="sudo"
else
    echo "mlwarden: cannot install dataset-fashion-mnist without root or sudo; pass --data DIR with the Fashion-MNIST IDX files instead" >&2
    exit 0
fi
if ! { $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo apt-get update -qq >/dev/null 2>&1 && $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; }; }; then
    echo "mlwarden: could not install dataset-fashion-mnist with apt-get; pass --data DIR with the Fashion-MNIST IDX files instead" >&2
fi
exit 0
