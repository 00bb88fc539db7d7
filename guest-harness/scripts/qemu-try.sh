#!/bin/sh
# Boot the guest harness once under qemu (TCG) without the bench, for manual testing.
#   qemu-try.sh JOBFILE [extra kernel cmdline...]
# Env: KERNEL (bzImage), HARNESS (static binary), OUT (dir for console.log/ctl.log),
#      TIMEOUT (s, default 120), SMP (default 3,sockets=3: the kernel has no ACPI and
#      SeaBIOS's MP table lists only the first logical CPU of each package), CPU (max),
#      EXTRA (more qemu options, e.g. -gdb tcp::1234 for gdb-gate-opener.py).
set -eu
job=$1; shift
KERNEL=${KERNEL:-/tmp/kb1/arch/x86/boot/bzImage}
HARNESS=${HARNESS:-${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/guest-harness}
OUT=${OUT:-/tmp/h-try}
mkdir -p "$OUT"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/memrace"
cp "$HARNESS" "$stage/init"
cp "$job" "$stage/memrace/job"
(cd "$stage" && find . | cpio -o -H newc --quiet) > "$OUT/initramfs.cpio"
rm -f "$OUT/console.log" "$OUT/ctl.log"
timeout "${TIMEOUT:-120}" qemu-system-x86_64 -accel tcg -cpu "${CPU:-max}" -smp "${SMP:-3,sockets=3,cores=1,threads=1}" -m 512 \
    -nographic -no-reboot -kernel "$KERNEL" -initrd "$OUT/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 nokaslr $*" \
    -serial "file:$OUT/console.log" -serial "file:$OUT/ctl.log" -monitor none ${EXTRA:-} || echo "qemu: exit $?"
cat "$OUT/ctl.log"
