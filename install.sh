#!/usr/bin/env bash
# Install attnopt from this checkout (editable) with exactly one onnxruntime.
#
# `onnxruntime` and `onnxruntime-gpu` both install the same `onnxruntime` module and break each
# other when both are present, so the choice cannot be a fixed dependency: this script keeps the
# one you already have, or installs onnxruntime (CPU; --cuda: onnxruntime-gpu) when you have none.
# It refuses an environment that already holds both, with the command that repairs it.
#
#   bash install.sh            attnopt + onnxruntime if none        (then: attnopt demo)
#   bash install.sh --test     + the test tools (pytest, xdist, transformers, matplotlib)
#   bash install.sh --cuda     onnxruntime-gpu when no onnxruntime is installed yet, and NVIDIA's cuDNN
#                              frontend (the [cudnn] extra: windows and memory at cuDNN's speed in torch)
#   bash install.sh --dry-run  print the pip commands, install nothing
#
# torch is pinned to 2.13.0, the release attnopt is tested with. On Linux, PyPI's torch wheel bundles
# the CUDA libraries (several GB); a CPU-only machine can take the CPU build first:
#   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PYTHON="${PYTHON:-python}"
test_tools=0 cuda=0 dry=0
for arg in "$@"; do
    case "$arg" in
        --test) test_tools=1 ;;
        --cuda) cuda=1 ;;
        --dry-run) dry=1 ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown option '$arg' (see bash install.sh --help)" >&2; exit 2 ;;
    esac
done

# The onnxruntime distributions this interpreter already has, e.g. "onnxruntime-gpu==1.31.1".
have=$("$PYTHON" - <<'EOF'
from importlib.metadata import distributions
names = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn",
         "onnxruntime-training"}
found = sorted({f"{d.metadata['Name'].lower().replace('_', '-')}=={d.version}" for d in distributions()
                if (d.metadata["Name"] or "").lower().replace("_", "-") in names})
print(" ".join(found))
EOF
)

extras=()
case "$(wc -w <<< "$have" | tr -d ' ')" in
    0) if [ "$cuda" = 1 ]; then extras+=(cuda); else extras+=(cpu); fi ;;
    1) echo "install.sh: keeping the installed $have" ;;
    *) names=$(sed 's/==[^ ]*//g' <<< "$have")
       echo "install.sh: this environment has several onnxruntime distributions ($have), which overwrite" \
            "each other's files; keep one: pip uninstall -y $names && pip install <the one you want>" >&2
       exit 2 ;;
esac
[ "$cuda" = 1 ] && extras+=(cudnn)
[ "$test_tools" = 1 ] && extras+=(test-tools)

spec="."
if [ "${#extras[@]}" -gt 0 ]; then spec=".[$(IFS=,; echo "${extras[*]}")]"; fi
run() { echo "+ $*"; if [ "$dry" = 0 ]; then "$@"; fi; }
run "$PYTHON" -m pip install torch==2.13.0
run "$PYTHON" -m pip install -e "$spec"
