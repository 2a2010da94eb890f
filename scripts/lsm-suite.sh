#!/usr/bin/env bash
# The BPF-LSM suite: boots stock Debian kernels (6.1 and 6.12) in qemu (TCG; KVM does not
# work on these hosts) from their packages — fetched with apt-get download, never installed —
# and runs integration/src/bin/lsm-guest.rs inside a busybox initramfs. Fails on any failed
# test, a missing result, or a guest that does not finish in time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
cache=$root/.palisade/lsm-cache
work=$root/.palisade/lsm-run
mkdir -p "$cache" "$work"
say() { printf 'lsm-suite: %s\n' "$*" >&2; }

kernels=("linux-image-6.1.0-56-amd64" "linux-image-6.12.117+deb12-amd64")

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /bin/busybox ]] && /bin/busybox --list 2>/dev/null | grep -qx ip || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq "${need[@]}" >&2
fi

for pkg in "${kernels[@]}"; do
  if [[ ! -f $cache/$pkg/vmlinuz ]]; then
    say "fetching $pkg"
    (cd "$cache" && apt-get download "$pkg" >&2 2>/dev/null || apt-get download "$pkg" >&2)
    deb=$(ls "$cache"/"${pkg}"_*.deb | head -n 1)
    rm -rf "$cache/$pkg.x" && mkdir -p "$cache/$pkg.x"
    dpkg-deb -x "$deb" "$cache/$pkg.x"
    mkdir -p "$cache/$pkg"
    cp "$cache/$pkg.x"/boot/vmlinuz-* "$cache/$pkg/vmlinuz"
    rm -rf "$cache/$pkg.x" "$deb"
  fi
done

say "building the static guest binaries"
CARGO_TARGET_DIR=$root/target/guest RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --locked -q --target x86_64-unknown-linux-gnu -p palisade-integration \
  --bin lsm-guest --bin connect-probe
guest_bin=$root/target/guest/x86_64-unknown-linux-gnu/debug

say "building the initramfs"
rm -rf "$work/initramfs" && mkdir -p "$work/initramfs"/{bin,proc,sys,tmp,dev}
cp /bin/busybox "$work/initramfs/bin/busybox"
cp "$guest_bin/lsm-guest" "$guest_bin/connect-probe" "$work/initramfs/bin/"
cat > "$work/initramfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t securityfs securityfs /sys/kernel/security
ip link set lo up
echo "GUEST lsm=$(cat /sys/kernel/security/lsm)"
/bin/lsm-guest
poweroff -f
INIT
chmod +x "$work/initramfs/init"
(cd "$work/initramfs" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initramfs.cpio.gz"

# Every check the guest runs (integration/src/bin/lsm-guest.rs); fewer results is a failure.
expected=26
failed=0
passed_total=0
for pkg in "${kernels[@]}"; do
  log=$work/$pkg.log
  say "booting $pkg"
  start=$(date +%s)
  timeout 1200 qemu-system-x86_64 -accel tcg -m 1024 -smp 1 -nographic -no-reboot \
    -kernel "$cache/$pkg/vmlinuz" -initrd "$work/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 loglevel=3" >"$log" 2>&1 || true
  took=$(( $(date +%s) - start ))
  tr -d '\r' < "$log" | grep -E '^(GUEST|INFO|RESULT|DONE)' | sed "s/^/[$pkg] /"
  if ! tr -d '\r' < "$log" | grep -qE '^DONE [0-9]+ 0$'; then
    say "$pkg: FAILED (see $log)"
    failed=1
  else
    n=$(tr -d '\r' < "$log" | sed -n 's/^DONE \([0-9]*\) 0$/\1/p')
    passed_total=$((passed_total + n))
    if ((n != expected)); then
      say "$pkg: FAILED: $n results, expected $expected (see $log)"
      failed=1
    else
      say "$pkg: $n passed in ${took}s"
    fi
  fi
done
if ((failed)); then
  echo "lsm-suite: $passed_total passed, 1 failed"
  exit 1
fi
echo "lsm-suite: $passed_total passed, 0 failed"

