#!/usr/bin/env bash
# Builds Slipway's VM test node images. Called by the vm-tests harness (src/image.rs), which
# decides what is cached; every input of this script is part of the harness's cache key.
#
#   build.sh BASE_TAR OUT AGENT ROOT_JSON BOOT_DIR VERSION...
#
# BASE_TAR   Debian 12 minbase root filesystem with systemd and the cloud kernel (made here with
#            mmdebstrap, from the machine's own apt sources, if missing)
# OUT        output directory: disk.raw (first VERSION in slot A, slot B empty), and for every
#            VERSION slot-VERSION.img (ext4) and payload-VERSION.zst (multi-frame zstd)
# AGENT      the slipway-agent binary to bake in
# ROOT_JSON  the signed root of trust the engine trusts
# BOOT_DIR   contents of the boot partition (grub/grub.cfg, grub/grubenv), made by the harness
#
# EXTENSIONS (environment, optional) is a directory of systemd-sysext runtime images (*.raw: the
# kubelet and containerd) put on the data partition, where the engine keeps runtime images.
#
# Only the root filesystem step needs root (mmdebstrap); everything after it runs under fakeroot
# with image files: mke2fs -d, sfdisk on a file, dd, grub-mkimage (no grub-install).
set -euo pipefail

BASE_TAR=$1 OUT=$2 AGENT=$3 ROOT_JSON=$4 BOOT_DIR=$5
shift 5
VERSIONS=("$@")
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SLOT_MIB=400
log() { printf 'image: %s\n' "$*" >&2; }

if [ ! -s "$BASE_TAR" ]; then
  log "root filesystem: mmdebstrap bookworm minbase + systemd + cloud kernel (a few minutes)"
  mkdir -p "$(dirname "$BASE_TAR")"
  mmdebstrap --quiet --variant=minbase --format=tar \
    --include="$(grep -v '^#' "$HERE/packages" | paste -sd, -)" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    bookworm "$BASE_TAR.partial"
  mv "$BASE_TAR.partial" "$BASE_TAR"
fi

rm -rf "$OUT"
mkdir -p "$OUT"
WORK="$OUT/work"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT

# --- kernel and a busybox initramfs that loads the virtio block driver --------------------------
log "kernel and initramfs"
mkdir -p "$WORK/k"
tar -xf "$BASE_TAR" -C "$WORK/k" --wildcards './boot/vmlinuz-*' './usr/lib/modules/*'
KVER=$(basename "$(ls -d "$WORK"/k/usr/lib/modules/*)")
MODDIR="$WORK/k/usr/lib/modules/$KVER"
# virtio_blk and its dependencies, dependencies first (modules.dep lists them after the module).
resolve() {
  local m=$1 deps
  deps=$(grep -E "(^|/)$m\.ko:" "$MODDIR/modules.dep" | cut -d: -f2)
  for d in $deps; do resolve "$(basename "$d" .ko)"; done
  grep -E "(^|/)$m\.ko:" "$MODDIR/modules.dep" | cut -d: -f1
}
INITRD="$WORK/initrd"
mkdir -p "$INITRD/bin" "$INITRD/modules"
cp /bin/busybox "$INITRD/bin/busybox"
cp "$HERE/init" "$INITRD/init"
: > "$INITRD/modules/order"
for m in virtio_pci virtio_blk; do
  for path in $(resolve "$m"); do
    name=$(basename "$path")
    if [ ! -f "$INITRD/modules/$name" ]; then
      cp "$MODDIR/$path" "$INITRD/modules/$name"
      echo "$name" >> "$INITRD/modules/order"
    fi
  done
done
(cd "$INITRD" && find . | cpio --quiet -o -H newc | gzip -1) > "$WORK/initrd.img"

# --- the root filesystem tree, shared by every version ------------------------------------------
log "root filesystem tree"
FR="$WORK/fakeroot.state"
TREE="$WORK/tree"
mkdir -p "$TREE"
fakeroot -s "$FR" -- tar -xpf "$BASE_TAR" -C "$TREE"
fakeroot -i "$FR" -s "$FR" -- bash -euo pipefail -c '
  TREE=$1 HERE=$2 REPO=$3 AGENT=$4 ROOT_JSON=$5 WORK=$6 KVER=$7
  cp -a "$HERE/overlay/." "$TREE/"
  install -m 0755 "$AGENT" "$TREE/usr/bin/slipway-agent"
  # Debug info is most of a debug build (100+ MB); the slot has room for the OS, not for that.
  strip --strip-debug "$TREE/usr/bin/slipway-agent"
  install -D -m 0644 "$ROOT_JSON" "$TREE/etc/slipway/root.json"
  install -D -m 0644 "$REPO/manifests/dbus/dev.slipway.Engine1.conf" \
    "$TREE/usr/share/dbus-1/system.d/dev.slipway.Engine1.conf"
  install -D -m 0644 "$REPO/manifests/systemd/slipway-engine.service" \
    "$TREE/etc/systemd/system/slipway-engine.service"
  install -D -m 0644 "$HERE/engine.toml" "$TREE/usr/lib/slipway/engine.d/10-vm.toml"
  mkdir -p "$TREE/kernel" "$TREE/var/lib/slipway" "$TREE/var/lib/extensions" \
    "$TREE/var/lib/containerd" "$TREE/var/lib/kubelet" "$TREE/etc/cni/net.d"
  cp "$WORK"/k/boot/vmlinuz-* "$TREE/kernel/vmlinuz"
  cp "$WORK/initrd.img" "$TREE/kernel/initrd.img"
  # Trim what a test node never uses: every byte here is downloaded, verified and written by each
  # update in every scenario. The kernel boots from /kernel; perl is only there for maintainer
  # scripts (perl-base stays); hwdb is device naming; the modules are hardware and file systems
  # a virtio node does not have (virtio, block, loop, overlay, squashfs, erofs, net core, and
  # the bridge and veth that pods are wired with stay).
  K="$TREE/usr/lib/modules/$KVER/kernel"
  rm -rf "$TREE"/usr/share/doc/* "$TREE"/usr/share/man/* "$TREE"/var/cache/apt/* \
    "$TREE"/var/lib/apt/lists/* "$TREE"/boot/initrd.img* "$TREE"/boot/vmlinuz* \
    "$TREE"/usr/share/perl "$TREE"/usr/lib/x86_64-linux-gnu/perl "$TREE"/usr/lib/x86_64-linux-gnu/libperl.so* \
    "$TREE"/usr/lib/udev/hwdb.bin "$TREE"/usr/lib/udev/hwdb.d/* \
    "$K"/sound "$K"/arch/x86/kvm \
    "$K"/drivers/{gpu,infiniband,media,comedi,target,md,ata,scsi,usb,staging,isdn,mtd,iio,hwmon} \
    "$K"/drivers/{thunderbolt,bluetooth,mmc,nvme,edac,firewire,parport,pcmcia,xen,hv,vfio,vdpa} \
    "$K"/drivers/net/{ethernet,wireless,can,wan,usb,ipa,fddi,hamradio,ieee802154,ppp,slip} \
    "$K"/fs/{xfs,btrfs,smb,nfs,nfsd,ceph,ocfs2,gfs2,jfs,reiserfs,ntfs3,f2fs,nilfs2,dlm,udf,ubifs} \
    "$K"/fs/{afs,orangefs,coda,lockd,nfs_common,cachefiles,gfs2,hfs,hfsplus,jffs2,minix,ufs,ocfs2} \
    "$K"/net/bridge/netfilter "$K"/net/{sunrpc,ceph,sctp,tipc,netfilter,bluetooth,wireless,mac80211,rds,rxrpc} \
    "$K"/net/{openvswitch,mpls,l2tp,dccp,batman-adv,6lowpan,ieee802154,nfc,can,atm,9p} \
    "$K"/net/ipv4/netfilter "$K"/net/ipv6/netfilter
  depmod -b "$TREE" "$KVER"
  : > "$TREE/etc/machine-id"
  echo slipway-vm > "$TREE/etc/hostname"
  ln -sf /dev/null "$TREE/etc/systemd/system/getty@tty1.service"
  # No login prompt on the serial console: agetty flushes the tty output queue when it starts
  # (tcflush TCIOFLUSH), which dropped a marker line the harness waits for. systemd-getty-generator
  # would add one for console=ttyS0 by itself, hence the mask rather than just not enabling it.
  ln -sf /dev/null "$TREE/etc/systemd/system/serial-getty@ttyS0.service"
  for u in slipway-engine slipway-vm-node slipway-vm-setup slipway-vm-runtime slipway-health \
    containerd kubelet slipway-vm-diag; do
    mkdir -p "$TREE/etc/systemd/system/multi-user.target.wants"
    ln -sf "/etc/systemd/system/$u.service" "$TREE/etc/systemd/system/multi-user.target.wants/$u.service"
  done
  # The runtime images (kubelet, containerd) merge into /usr at every boot, before sysinit.
  mkdir -p "$TREE/etc/systemd/system/sysinit.target.wants"
  ln -sf /lib/systemd/system/systemd-sysext.service \
    "$TREE/etc/systemd/system/sysinit.target.wants/systemd-sysext.service"
  ln -sf /lib/systemd/system/systemd-networkd.service \
    "$TREE/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
' _ "$TREE" "$HERE" "$REPO" "$AGENT" "$ROOT_JSON" "$WORK" "$KVER"

# --- packages a version adds (packages-VERSION: one Debian package name per line) ----------------
# Fetched with apt-get download into a cache beside the base tarball; installed with dpkg into the
# tree when that version is built (and so kept by every later version). 2.0.0 adds one package, so
# the 1.0.0 -> 2.0.0 update is the delta scenario's "one package added".
DEBS="$(dirname "$BASE_TAR")/debs"
mkdir -p "$DEBS"
for list in "$HERE"/packages-*; do
  [ -e "$list" ] || continue
  for p in $(grep -v '^#' "$list"); do
    if ! ls "$DEBS/${p}"_*.deb >/dev/null 2>&1; then
      log "downloading $p"
      (cd "$DEBS" && apt-get download -q "$p" 2>&1 | grep -v "couldn't be accessed by user '_apt'" >&2 || true)
      ls "$DEBS/${p}"_*.deb >/dev/null 2>&1 || { log "apt-get download $p failed"; exit 1; }
    fi
  done
done

# --- one ext4 slot image and payload per version --------------------------------------------------
for v in "${VERSIONS[@]}"; do
  log "slot image $v"
  if [ -f "$HERE/packages-$v" ]; then
    for p in $(grep -v '^#' "$HERE/packages-$v"); do
      log "$v adds the Debian package $p"
      # No maintainer scripts run in a chroot (--force-script-chrootless), triggers (e.g.
      # initramfs-tools', which this image does not use) stay pending.
      fakeroot -i "$FR" -s "$FR" -- dpkg --root="$TREE" --force-not-root \
        --force-script-chrootless --no-triggers -i "$DEBS/${p}"_*.deb >/dev/null
    done
  fi
  fakeroot -i "$FR" -s "$FR" -- bash -euo pipefail -c '
    TREE=$1 v=$2
    sed -i "/^SLIPWAY_VERSION=/d" "$TREE/etc/os-release"
    echo "SLIPWAY_VERSION=$v" >> "$TREE/etc/os-release"
    # Version 3.x.x is the bad release of the fallback scenario: its health check fails.
    case "$v" in
      3.*) printf "#!/bin/sh\necho \"slipway health: release %s is broken on purpose\" >&2\nexit 1\n" "$v" ;;
      *)   printf "#!/bin/sh\nsystemctl is-active --quiet slipway-engine.service\n" ;;
    esac > "$TREE/usr/lib/slipway/health-check"
    chmod 0755 "$TREE/usr/lib/slipway/health-check"
  ' _ "$TREE" "$v"
  img="$OUT/slot-$v.img"
  # 4 KiB file system blocks (mke2fs would pick 1 KiB for a file system this small): file data
  # then sits at 4 KiB boundaries, as on any production-sized root file system, so a delta
  # finds the blocks of files that moved when another file was added before them.
  fakeroot -i "$FR" -- mke2fs -q -t ext4 -b 4096 -O ^orphan_file,^metadata_csum_seed \
    -L "slipway-$v" -E root_owner=0:0 -d "$TREE" "$img" "${SLOT_MIB}M" 2>/dev/null ||
    fakeroot -i "$FR" -- mke2fs -q -t ext4 -b 4096 -L "slipway-$v" -d "$TREE" "$img" "${SLOT_MIB}M"
  e2fsck -fy "$img" >/dev/null 2>&1 || true
  resize2fs -M "$img" >/dev/null 2>&1
  # Independent zstd frames of 8 MiB: a download can resume at any frame boundary.
  rm -rf "$WORK/chunks" && mkdir "$WORK/chunks"
  split -b 8M -d -a 4 "$img" "$WORK/chunks/c"
  for c in "$WORK"/chunks/c*; do zstd -q -3 --rm "$c"; done
  cat "$WORK"/chunks/c*.zst > "$OUT/payload-$v.zst"
done

# --- optional, for the delta benchmark: the last version with another kernel -------------------
# KERNEL_VARIANT (environment) names a Debian kernel package, e.g. linux-image-6.1.0-50-cloud-amd64:
# its vmlinuz and modules replace the tree's (only the module directories the trimmed tree kept),
# into slot-kernel.img: "the kernel replaced" in `cargo bench --bench delta`. Not booted.
if [ -n "${KERNEL_VARIANT:-}" ]; then
  log "kernel variant $KERNEL_VARIANT"
  if ! ls "$DEBS/${KERNEL_VARIANT}"_*.deb >/dev/null 2>&1; then
    (cd "$DEBS" && apt-get download -q "$KERNEL_VARIANT" 2>&1 | grep -v "couldn't be accessed by user '_apt'" >&2 || true)
  fi
  rm -rf "$WORK/kv" && mkdir -p "$WORK/kv"
  dpkg-deb -x "$DEBS/${KERNEL_VARIANT}"_*.deb "$WORK/kv"
  NEWMODS=$( (ls -d "$WORK"/kv/lib/modules/* "$WORK"/kv/usr/lib/modules/* 2>/dev/null || true) | head -1)
  [ -n "$NEWMODS" ] || { log "$KERNEL_VARIANT has no modules directory"; exit 1; }
  fakeroot -i "$FR" -s "$FR" -- bash -euo pipefail -c '
    TREE=$1 WORK=$2 KVER=$3 NEWMODS=$4
    NEW=$(basename "$NEWMODS")
    OLD="$TREE/usr/lib/modules/$KVER"
    (cd "$OLD" && find . -type d) | sort > "$WORK/kept-dirs"
    rm -rf "$OLD"
    cp -a "$NEWMODS" "$TREE/usr/lib/modules/$NEW"
    (cd "$TREE/usr/lib/modules/$NEW" && find . -mindepth 1 -type d) | sort |
      comm -23 - "$WORK/kept-dirs" | while read -r d; do rm -rf "$TREE/usr/lib/modules/$NEW/$d"; done
    cp "$WORK"/kv/boot/vmlinuz-* "$TREE/kernel/vmlinuz"
    depmod -b "$TREE" "$NEW"
  ' _ "$TREE" "$WORK" "$KVER" "$NEWMODS"
  img="$OUT/slot-kernel.img"
  fakeroot -i "$FR" -- mke2fs -q -t ext4 -b 4096 -O ^orphan_file,^metadata_csum_seed \
    -L slipway-kernel -E root_owner=0:0 -d "$TREE" "$img" "${SLOT_MIB}M" 2>/dev/null ||
    fakeroot -i "$FR" -- mke2fs -q -t ext4 -b 4096 -L slipway-kernel -d "$TREE" "$img" "${SLOT_MIB}M"
  e2fsck -fy "$img" >/dev/null 2>&1 || true
  resize2fs -M "$img" >/dev/null 2>&1
fi

# --- boot partition, data partition, disk ----------------------------------------------------------
log "disk"
mke2fs -q -t ext2 -L slipway-boot -d "$BOOT_DIR" "$WORK/boot.img" 32M
# The data partition outlives OS updates: engine state, runtime images, containerd, kubelet.
DATA_MIB=1024
mkdir -p "$WORK/data/extensions" "$WORK/data/containerd" "$WORK/data/kubelet"
if [ -n "${EXTENSIONS:-}" ]; then
  cp "$EXTENSIONS"/*.raw "$WORK/data/extensions/"
fi
mke2fs -q -t ext4 -L slipway-data -E root_owner=0:0 -d "$WORK/data" "$WORK/data.img" "${DATA_MIB}M"
DISK="$OUT/disk.raw"
P1=2048 P1S=$((32 * 2048))
P2=$((P1 + P1S)) PS=$((SLOT_MIB * 2048))
P3=$((P2 + PS))
P4=$((P3 + PS)) P4S=$((DATA_MIB * 2048))
truncate -s $(((P4 + P4S + 2048) * 512)) "$DISK"
sfdisk -q "$DISK" <<SFDISK
label: dos
start=$P1, size=$P1S, type=83, bootable
start=$P2, size=$PS, type=83
start=$P3, size=$PS, type=83
start=$P4, size=$P4S, type=83
SFDISK
dd if="$WORK/boot.img" of="$DISK" bs=512 seek=$P1 conv=notrunc,sparse status=none
dd if="$OUT/slot-${VERSIONS[0]}.img" of="$DISK" bs=512 seek=$P2 conv=notrunc,sparse status=none
dd if="$WORK/data.img" of="$DISK" bs=512 seek=$P4 conv=notrunc,sparse status=none
grub-mkimage -O i386-pc -o "$WORK/core.img" -p '(hd0,msdos1)/grub' \
  biosdisk part_msdos ext2 normal configfile linux echo test loadenv serial terminal boot gzio
[ "$(stat -c %s "$WORK/core.img")" -lt $(((P1 - 1) * 512)) ] || { log "core.img too large"; exit 1; }
dd if=/usr/lib/grub/i386-pc/boot.img of="$DISK" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$DISK" bs=512 seek=1 conv=notrunc status=none
log "done: $DISK"
