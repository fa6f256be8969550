//go:build interop

package interop

import "syscall"

// dieWithParent makes the kernel kill a started process when this test
// process dies, so a killed run leaves no Python worker behind.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
