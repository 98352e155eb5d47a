//go:build unix

package main

import "syscall"

// openFileLimit returns the soft RLIMIT_NOFILE of the process. The Go
// runtime has already raised it to the hard limit at start-up on Linux and
// the BSDs.
func openFileLimit() (uint64, error) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, err
	}
	return uint64(r.Cur), nil
}
