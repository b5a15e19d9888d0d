#!/usr/bin/env bash
# Fill a data root with the files the paper presets read (docs/cluster.md, "Data").
#
#   scripts/get_reference_data.sh DATA_ROOT            fetch the ΔBelief-RL release, then verify
#   scripts/get_reference_data.sh --verify DATA_ROOT   only verify what is there
#
# The ΔBelief-RL files come from github.com/bethgelab/delta-belief-rl at a pinned commit
# (override the clone source with REFERENCE_REPO, e.g. a local mirror). STaR-GATE's four test
# files are not in a public repository: copy them into DATA_ROOT/star_gate/ yourself; this
# script checks them against the digests below, which are those the presets were tested with.
set -euo pipefail

REFERENCE_REPO="${REFERENCE_REPO:-https://github.com/bethgelab/delta-belief-rl.git}"
REFERENCE_COMMIT=f173b54a559b50db35a45daec0463f571d092981

# destination under DATA_ROOT | path in the reference repository | sha256
FILES="
delta_belief_rl/twenty_questions/train_rl.parquet|delta_belief_rl/env/twenty_questions/direct/coca_plus/train_rl.parquet|d7452ca44c4b3faa57bfe164d16abf5d89f208b1ead5cd1c1bb05322c187e95f
delta_belief_rl/twenty_questions/val.parquet|delta_belief_rl/env/twenty_questions/direct/coca_plus/val.parquet|0b95eda94e2bbdc70c0e686e24f105f110968ebd44cac047e224fd1a0b6b3e71
delta_belief_rl/twenty_questions/test.parquet|delta_belief_rl/env/twenty_questions/direct/coca_plus/test.parquet|cbf0fd4b5a3400b7c5a97df8525e025134fac2f46787e1ceba21d1ae22e5e04d
delta_belief_rl/guess_my_city/test.parquet|delta_belief_rl/env/guess_my_city/direct/paprika/test.parquet|c9119acd2b5a254eda95af200f87eda691ce591cf7b252a5116bc0ec137a3005
delta_belief_rl/murder_mystery/test.parquet|delta_belief_rl/env/murder_mystery/direct/paprika/test.parquet|4fe959a854d30916bc67a09bef2a2d79a902b232717430fd17f80de62cf32e82
delta_belief_rl/customer_service/test.parquet|delta_belief_rl/env/customer_service/direct/paprika/test.parquet|011df46a889d112f1d10c419985655b508dba229343d4b2624c61a9adfacb7ac
paprika/guess_my_city.json|delta_belief_rl/env/guess_my_city/config/paprika/guess_my_city.json|83fbc90f2c7f2d37a24311b56bae367aaef200ffe0e6a64c4a65d9002195e7f5
paprika/murder_mystery.json|delta_belief_rl/env/murder_mystery/config/paprika/murder_mystery.json|2ae865e60662135f6e867a95653be48ecc8b6a51cddc5c3e46e2538ae24b2184
paprika/customer_service.json|delta_belief_rl/env/customer_service/config/paprika/customer_service.json|0ebadf112db200501d90cda51aa9df618e889d408a6f4ecb7a8a6dcfac3d3c5e
star_gate/personas_test.json||936daa2b55e23f67155eb53288fb22e69aefdc2bb3d6adc00abb275d28de3cac
star_gate/personas_test_NAMES.json||a282b0432161a247701d3cc4b9e6017772c1bdd715a63efd283276092b57582e
star_gate/prompts_test.json||57f1f7b7f7384b9a0d111b6a304f305642650fb4928a757152d965898d9c1e41
star_gate/gold-responses_test.json||f01b2df5af0ed52cd33f593ce845dc54a0c67452b2a3251ddc32340135586e07
"

usage() { echo "usage: $0 [--verify] DATA_ROOT" >&2; exit 2; }

verify_only=false
if [[ "${1:-}" == "--verify" ]]; then verify_only=true; shift; fi
[[ $# -eq 1 ]] || usage
root="$1"
mkdir -p "$root"

if ! $verify_only; then
    checkout="$(mktemp -d)"
    trap 'rm -rf "$checkout"' EXIT
    # A blob-less clone fetches only the files checked out below (a few hundred KB).
    git clone --quiet --filter=blob:none --no-checkout "$REFERENCE_REPO" "$checkout"
    sources=$(echo "$FILES" | awk -F'|' 'NF == 3 && $2 != "" {print $2}')
    # shellcheck disable=SC2086
    git -C "$checkout" checkout --quiet "$REFERENCE_COMMIT" -- $sources
    echo "$FILES" | while IFS='|' read -r dest source _; do
        [[ -n "$dest" && -n "$source" ]] || continue
        mkdir -p "$root/$(dirname "$dest")"
        cp "$checkout/$source" "$root/$dest"
    done
fi

missing=0
bad=0
while IFS='|' read -r dest _ digest; do
    [[ -n "$dest" ]] || continue
    if [[ ! -f "$root/$dest" ]]; then
        echo "missing  $root/$dest"
        missing=$((missing + 1))
    elif [[ "$(sha256sum "$root/$dest" | cut -d' ' -f1)" != "$digest" ]]; then
        echo "DIFFERS  $root/$dest (sha256 is not the tested file's $digest)"
        bad=$((bad + 1))
    else
        echo "ok       $root/$dest"
    fi
done <<< "$FILES"

if ((bad > 0)); then
    echo "$bad file(s) differ from the tested release" >&2
    exit 1
fi
if ((missing > 0)); then
    echo "$missing file(s) missing (STaR-GATE's files are copied by hand; see docs/cluster.md, Data)" >&2
    exit 1
fi
echo "data root $root is complete"
