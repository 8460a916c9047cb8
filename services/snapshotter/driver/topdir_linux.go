package driver

import (
	"os"

	"golang.org/x/sys/unix"
)

// fsTopdirFL is the inode flag (chattr +T) telling ext-family filesystems
// that a directory's subdirectories are unrelated trees.
const fsTopdirFL = 0x00020000

// spreadSubdirs asks the filesystem holding dir to place each new
// subdirectory (a snapshot) where it has the most room rather than beside
// dir. On ext4 that keeps a snapshot's files away from block groups other
// trees under the same parent keep filling and emptying: without a journal,
// ext4 skips an inode freed in the last seconds one by one on every
// allocation, so a layer unpacked next to a removed one pays for each file
// it creates with a scan of every file just removed (measured: a layer of
// 12,000 files unpacked in 13 s of system time beside removed snapshots, in
// under 1 s in a fresh group). Best effort: other filesystems do not know
// the flag, and their directories are placed as before.
func spreadSubdirs(dir string) {
	f, err := os.Open(dir)
	if err != nil {
		return
	}
	defer f.Close()
	flags, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil || flags&fsTopdirFL != 0 {
		return
	}
	_ = unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, flags|fsTopdirFL)
}
