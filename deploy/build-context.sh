#!/bin/bash
# Builds the Docker build context of the Flotilla image from local files only
# (no registry is needed): deploy/Dockerfile, the binaries of `make build`,
# and a minimal root filesystem taken from this host: runc, busybox-static
# (a shell for `docker exec`), Debian's CNI plugins if installed, and the
# shared libraries the dynamically linked binaries need.
#   deploy/build-context.sh [BIN] [OUT]      (defaults: bin, build/image)
#   docker build -t flotilla:local build/image
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin=$(cd "${1:-$here/../bin}" && pwd)
out=${2:-$here/../build/image}

need() { # need <path> <what provides it>
	if [ ! -e "$1" ]; then
		echo "$1 not found: $2" >&2
		exit 1
	fi
}
for b in flotillad flotilla-content flotilla-metadata flotilla-snapshotter flotilla-tasks flotilla-cri containerd-shim-runc-v2; do
	need "$bin/$b" "run make build"
done
runc=$(command -v runc || true)
busybox=$(command -v busybox || true)
need "${runc:-/usr/sbin/runc}" "install Debian's runc (make deps)"
need "${busybox:-/bin/busybox}" "install Debian's busybox-static (make test-deps)"
if ldd "$busybox" >/dev/null 2>&1; then
	echo "$busybox is dynamically linked: install Debian's busybox-static" >&2
	exit 1
fi

rm -rf "$out"
mkdir -p "$out/bin" "$out/rootfs"
cp "$here/Dockerfile" "$out/Dockerfile"
cp -a "$bin"/flotillad "$bin"/flotilla-* "$bin"/containerd-shim-runc-v2 "$out/bin/"

r=$out/rootfs
mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc/flotilla,tmp,run,var/lib,var/run,proc,sys,dev,root}
chmod 1777 "$r/tmp"
cp "$runc" "$r/usr/sbin/runc"
cp "$busybox" "$r/bin/busybox"
for applet in $("$busybox" --list); do
	[ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"
done

# CNI plugins for the cri service, where the host has Debian's.
if [ -d /usr/lib/cni ]; then
	mkdir -p "$r/usr/lib/cni"
	cp -a /usr/lib/cni/. "$r/usr/lib/cni/"
fi

# Every shared library (and the loader) the dynamic binaries load, at the
# path the host has it.
for f in "$out"/bin/* "$r/usr/sbin/runc" "$r"/usr/lib/cni/*; do
	ldd "$f" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}'
done | sort -u | while read -r lib; do
	mkdir -p "$r$(dirname "$lib")"
	cp -L "$lib" "$r$lib"
done
# Debian's libraries live under /usr/lib; /lib and /lib64 are links there.
for l in lib lib64; do
	if [ -L "/$l" ] && [ -d "$r/$l" ] && [ ! -L "$r/$l" ]; then
		mkdir -p "$r/usr/$l"
		cp -a "$r/$l/." "$r/usr/$l/"
		rm -rf "${r:?}/$l"
		ln -s "usr/$l" "$r/$l"
	fi
done

printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
printf 'root:x:0:\n' >"$r/etc/group"
echo "build context ready: docker build -t flotilla:local $out"
