//go:build !linux

package trip_test

import "syscall"

func procAttr() *syscall.SysProcAttr { return nil }
