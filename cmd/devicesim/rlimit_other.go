//go:build !unix

package main

// openFileLimit reports no limit where RLIMIT_NOFILE does not exist.
func openFileLimit() (uint64, error) { return 0, nil }
