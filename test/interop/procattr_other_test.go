//go:build interop && !linux

package interop

import "syscall"

// dieWithParent: only Linux can tie a child's life to its parent's; elsewhere
// a killed run's Python processes are left to end with their vhost.
func dieWithParent() *syscall.SysProcAttr { return nil }
