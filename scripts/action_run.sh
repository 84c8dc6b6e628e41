#!/usr/bin/env bash
# The GitHub Action's scan step. Every input arrives in an environment variable and is passed to
# hfscan as a separate argument: nothing is evaluated by the shell.
set -uo pipefail

fail() { echo "::error::$1" >&2; exit 2; }

model="${INPUT_MODEL:-}"
[[ -n "$model" ]] || fail "input 'model' is required"
shown="${model//[$'\r\n']/ }"  # never let an input start a new workflow-command line
fail_on="${INPUT_FAIL_ON:-backdoor}"
case "$fail_on" in backdoor|suspicious|never) ;; *) fail "fail-on must be backdoor, suspicious or never" ;; esac
case "${INPUT_OPEN_PR:-false}" in true|false) ;; *) fail "open-pr must be true or false" ;; esac
out="${INPUT_OUTPUT:-hfscan-report}"
formats="${INPUT_FORMAT:-json,md,html}"
formats="json,sarif,summary,${formats}"

args=(check "$model" -o "$out" --format "$formats")
if [[ -n "${INPUT_PEERS:-}" ]]; then
  while IFS= read -r peer; do
    peer="${peer#"${peer%%[![:space:]]*}"}"; peer="${peer%"${peer##*[![:space:]]}"}"
    [[ -n "$peer" ]] && args+=(--peer "$peer")
  done < <(printf '%s\n' "$INPUT_PEERS" | tr ',' '\n')
fi
if [[ "${INPUT_OPEN_PR:-false}" == "true" ]]; then
  args+=(--open-pr --yes)
fi
if [[ -n "${INPUT_PUSH_VARIANT:-}" ]]; then
  args+=(--push-variant "$INPUT_PUSH_VARIANT" --yes)
fi
if [[ -n "${INPUT_EXTRA_ARGS:-}" ]]; then
  read -r -a extra <<< "$INPUT_EXTRA_ARGS"
  args+=("${extra[@]}")
fi
[[ -n "${HF_TOKEN:-}" ]] || unset HF_TOKEN

hfscan "${args[@]}"
rc=$?
if [[ $rc -ge 2 ]]; then
  echo "::error::hfscan could not scan ${shown} (exit code $rc)" >&2
  exit "$rc"
fi

python - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "report.json")))
asr = max((f["asr_before"] for f in r["findings"]), default=None)
after = [f["asr_after"] for f in r["findings"] if f["asr_after"] is not None]
vals = {
    "verdict": r["verdict"],
    "max-asr": "" if asr is None else str(asr),
    "defended-asr": str(max(after)) if after else "",
    "report-dir": out,
    "sarif-file": os.path.join(out, "report.sarif"),
}
with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as f:
    for k, v in vals.items():
        f.write(f"{k}={v}\n")
summary = os.environ.get("GITHUB_STEP_SUMMARY")
if summary:
    with open(summary, "a", encoding="utf-8") as f:
        f.write(open(os.path.join(out, "summary.md"), encoding="utf-8").read())
PY

verdict=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["verdict"])' "$out/report.json")
case "$fail_on:$verdict" in
  backdoor:backdoor|suspicious:backdoor|suspicious:suspicious)
    echo "::error::hfscan verdict for ${shown}: $verdict" >&2
    exit 1 ;;
esac
exit 0
