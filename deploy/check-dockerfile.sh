#!/usr/bin/env bash
# Runs deploy/Dockerfile's steps without a container engine, for CI machines
# that have none: the build stage's RUN command, read from the Dockerfile
# itself, in a copy of the build context (the repository less what
# Dockerfile.dockerignore leaves out), installing under a scratch root instead
# of /; then the runtime stage's checks on what it copies: the binary is at
# the COPY --from=build path, needs no library beyond glibc's and libgcc's
# (all the runtime image adds is ca-certificates), and runs as the image's
# USER with its ENV.
#   deploy/check-dockerfile.sh
# What it cannot check: the base images themselves, and apt-get in the
# runtime stage. The build reuses the repository's target/ (the Dockerfile's
# cache mount), so only the workspace's own crates are built again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dockerfile="$repo/deploy/Dockerfile"
ignore="$repo/deploy/Dockerfile.dockerignore"

fail() {
  echo "check-dockerfile: $*" >&2
  exit 1
}

# The Dockerfile with continuation lines joined, comments dropped.
instructions="$(sed -e '/^[[:space:]]*#/d' "$dockerfile" | sed -e ':a' -e '/\\$/{N;s/\\\n/ /;ba' -e '}')"
# The build stage: from its FROM to the next one.
build_stage="$(awk '/^FROM /{n++} n==1' <<<"$instructions")"
runtime_stage="$(awk '/^FROM /{n++} n==2' <<<"$instructions")"
[ -n "$build_stage" ] && [ -n "$runtime_stage" ] || fail "expected two stages in $dockerfile"
grep -qx 'WORKDIR /src' <<<"$build_stage" || fail "the build stage's WORKDIR is not /src"
grep -qx 'COPY . .' <<<"$build_stage" || fail "the build stage does not COPY . ."
run="$(grep '^RUN ' <<<"$build_stage")"
[ "$(wc -l <<<"$run")" = 1 ] || fail "expected one RUN in the build stage, found: $run"
# Without RUN and its --mount options; the paths it installs to go under $root.
command="$(sed -E -e 's/^RUN +//' -e 's/--mount=[^ ]+ +//g' <<<"$run")"
copy="$(grep '^COPY --from=build ' <<<"$runtime_stage")"
read -r _ _ copied_from copied_to <<<"$copy"

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
# The image's user must reach the binary under it.
chmod 0755 "$scratch"
context="$scratch/src"
root="$scratch/root"
mkdir -p "$context" "$root/usr/local/bin"

# The build context: patterns anchored at the root (`target/`) and anywhere
# (`**/__pycache__/`), as BuildKit reads them.
excludes=()
while IFS= read -r pattern; do
  pattern="${pattern%%#*}"
  pattern="${pattern%/}"
  pattern="$(echo "$pattern" | xargs)"
  [ -n "$pattern" ] || continue
  case "$pattern" in
    '**/'*) excludes+=(--no-anchored "--exclude=${pattern#\*\*/}") ;;
    *) excludes+=(--anchored "--exclude=./$pattern") ;;
  esac
done <"$ignore"
tar -C "$repo" "${excludes[@]}" -cf - . | tar -C "$context" -xf -
for kept in target .jetrun .git; do
  [ ! -e "$context/$kept" ] || fail "$kept is in the build context"
done
# The cache mount at /src/target: the repository's own target folder.
ln -s "$repo/target" "$context/target"

echo "check-dockerfile: building as the Dockerfile does: $command"
(
  cd "$context"
  unset CARGO_TARGET_DIR
  eval "${command//\/usr\/local\/bin\//$root/usr/local/bin/}"
)

binary="$root$copied_from"
[ -x "$binary" ] || fail "COPY --from=build $copied_from: the build stage left nothing there"
[ "$copied_from" = "$copied_to" ] || fail "the runtime stage copies $copied_from to $copied_to"

# debian:*-slim has libc6 and libgcc-s1; anything more must be installed by
# the runtime stage, which installs only ca-certificates.
while read -r library _; do
  case "$library" in
    linux-vdso.so.* | libc.so.* | libm.so.* | libgcc_s.so.* | libpthread.so.* | libdl.so.* | librt.so.* | /lib64/ld-linux-*.so.* | /lib/ld-linux-*.so.*) ;;
    *) fail "the binary needs $library, which the runtime image does not have" ;;
  esac
done < <(ldd "$binary")

# USER and ENV of the runtime stage, as the container would run it.
user="$(grep '^USER ' <<<"$runtime_stage" | awk '{print $2}')"
uid="${user%%:*}"
gid="${user##*:}"
[ "$uid" != 0 ] && [ "$uid" != root ] || fail "the runtime stage runs as root"
env=()
while read -r _ assignment; do
  env+=("$assignment")
done < <(grep '^ENV ' <<<"$runtime_stage")
as_user=()
if [ "$(id -u)" = 0 ]; then
  as_user=(setpriv "--reuid=$uid" "--regid=$gid" --clear-groups)
fi
version="$(cd / && env -i "${env[@]}" "${as_user[@]}" "$binary" --version)"
echo "check-dockerfile: ok: $version, as uid $uid (${as_user[*]:-this user}), ENV ${env[*]}"
