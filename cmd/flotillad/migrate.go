package main

import (
	"fmt"
	"os"

	"github.com/flotilla-project/flotilla/pkg/config/migrate"
)

// migrateConfig is `flotillad config migrate`: containerd's configuration
// at path as Flotilla's on stdout, what it could not carry over on stderr.
func migrateConfig(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	r, err := migrate.Containerd(b, path)
	if err != nil {
		return err
	}
	if _, err := os.Stdout.Write(r.Config); err != nil {
		return err
	}
	for _, n := range r.Notes {
		fmt.Fprintln(os.Stderr, "flotillad config migrate:", n)
	}
	return nil
}
