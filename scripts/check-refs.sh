#!/usr/bin/env bash
# Every contract section the repository cites must be in the repository (issue 45).
#
# The contract is docs/CONTRACT.md, whose sections are `## §N. Title` (and `### Title` inside
# them). This fails, printing file:line for each finding, when a tracked file
#   - still cites the external spec this repository used to point to (the word written in
#     capitals, alone, as in "<that word> §9", "<that word>.md", "the <that word>"), or
#   - cites `CONTRACT.md §N` (also `§N and §M`, `§N, §M`, `§N–M`, or the §N on the next line
#     after a line ending in `CONTRACT.md`) for a section docs/CONTRACT.md does not have, or a
#     quoted sub-heading (`CONTRACT.md §9, "Agent identity"`) that section does not have, or
#   - links to `CONTRACT.md#anchor` where no heading of docs/CONTRACT.md has that anchor, or
#   - is docs/CONTRACT.md and names a `§N` it does not have.
#
# Usage: scripts/check-refs.sh   (from anywhere inside the repository; exit 1 on findings)
set -euo pipefail
export LC_ALL=C
cd "$(git rev-parse --show-toplevel)"

contract=docs/CONTRACT.md
self=scripts/check-refs.sh
if [[ ! -f $contract ]]; then
  echo "check-refs: $contract is missing" >&2
  exit 1
fi

# The sections (`N`), their anchors, and each sub-heading as `N<TAB>title`. Anchors are
# GitHub's: lower case, punctuation dropped, spaces turned into hyphens.
sections=$(sed -n 's/^## §\([0-9][0-9]*\)\. .*/\1/p' "$contract")
anchors=$(sed -n 's/^##* //p' "$contract" | tr '[:upper:]' '[:lower:]' | sed 's/[^a-z0-9 _-]//g; s/ /-/g')
subheadings=$(awk '/^## §[0-9]+\. / { n = $2; sub(/^§/, "", n); sub(/\.$/, "", n); next }
  /^### / && n != "" { t = $0; sub(/^### /, "", t); print n "\t" t }' "$contract")

failed=0
report() { # file:line, message
  printf '%s: %s\n' "$1" "$2"
  failed=1
}
has_section() { grep -qx -- "$1" <<<"$sections"; }

# 1. The external spec, however it is spelt. The pattern is built so that this file does not
# match itself.
word='SP''EC'
while IFS= read -r hit; do
  report "${hit%%:*}:$(cut -d: -f2 <<<"$hit")" "cites the external spec; cite docs/CONTRACT.md instead"
done < <(git grep -nIE "(^|[^A-Za-z0-9_])$word([^A-Za-z0-9_]|\$)" -- . ":!$self" | cut -d: -f1,2)

# 2. `CONTRACT.md §N` and the sections named right after it; a sub-heading in quotes after it.
# One match per line of output: file:line:match.
# (`(§)?`, not `§?`: in the C locale `?` would apply to the last byte of `§` only.)
cite='CONTRACT\.md §(§)?[0-9]+((, | and | or |–|-)(§)?[0-9]+)*(,? "[^"]+")?'
while IFS= read -r hit; do
  where=${hit%%:*}:$(cut -d: -f2 <<<"$hit")
  text=${hit#*:*:}
  numbers=$(grep -oE '[0-9]+' <<<"${text%%\"*}")
  for n in $numbers; do
    has_section "$n" || report "$where" "CONTRACT.md has no §$n (\"$text\")"
  done
  if [[ $text =~ \"([^\"]+)\" ]]; then
    title=${BASH_REMATCH[1]}
    first=$(head -n1 <<<"$numbers")
    grep -qxF -- "$first"$'\t'"$title" <<<"$subheadings" ||
      report "$where" "CONTRACT.md §$first has no sub-heading \"$title\""
  fi
done < <(git grep -nIoE "$cite" -- . ":!$self")

# A citation wrapped after `CONTRACT.md`: the §N opens the next line (after a comment marker).
while IFS= read -r hit; do
  where=${hit%%:*}:$(cut -d: -f2 <<<"$hit")
  n=$(cut -d: -f3- <<<"$hit")
  has_section "$n" || report "$where" "CONTRACT.md has no §$n"
done < <(git grep -lIE 'CONTRACT\.md$' -- . ":!$self" | while IFS= read -r file; do
  awk -v f="$file" 'wrapped { line = $0; sub(/^[[:space:]]*(\/\/[\/!]?|#|\*)?[[:space:]]*/, "", line)
      if (match(line, /^§[0-9]+/)) print f ":" NR ":" substr(line, 3, RLENGTH - 2) }
    { wrapped = /CONTRACT\.md$/ }' "$file"
done)

# 3. Links to an anchor of the contract.
while IFS= read -r hit; do
  where=${hit%%:*}:$(cut -d: -f2 <<<"$hit")
  anchor=${hit##*#}
  grep -qxF -- "$anchor" <<<"$anchors" || report "$where" "docs/CONTRACT.md has no heading #$anchor"
done < <(git grep -nIoE 'CONTRACT\.md#[A-Za-z0-9_-]+' -- . ":!$self")

# 4. The contract's own cross-references.
while IFS= read -r hit; do
  n=${hit##*§}
  has_section "$n" || report "$contract:${hit%%:*}" "names §$n, which it does not have"
done < <(grep -noE '§[0-9]+' "$contract")

if ((failed)); then
  echo "check-refs: citations above do not resolve in the repository (see docs/CONTRACT.md)" >&2
  exit 1
fi
echo "check-refs: every contract citation resolves in docs/CONTRACT.md"
