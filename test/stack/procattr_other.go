//go:build !linux

package stack

import "syscall"

// DieWithParent: only Linux can tie a child's life to its parent's;
// elsewhere a killed run's processes live on until their vhost and
// database are reaped by the next run.
func DieWithParent() *syscall.SysProcAttr { return nil }
