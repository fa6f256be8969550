package stack

import "syscall"

// DieWithParent returns process attributes that make the kernel kill a
// started process when the test process dies, so a killed run leaves no
// service (holding its vhost and database) behind.
func DieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
