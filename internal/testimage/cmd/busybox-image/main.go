// Command busybox-image writes the test busybox image as an OCI archive, for
// trying Flotilla by hand without a registry:
//
//	go run ./internal/testimage/cmd/busybox-image -o busybox.tar
//	ctr images import --no-unpack busybox.tar
package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/flotilla-project/flotilla/internal/testimage"
)

func main() {
	out := flag.String("o", "-", "where to write the archive (- for stdout)")
	name := flag.String("name", testimage.DefaultName, "image name recorded in the archive")
	flag.Parse()
	if err := run(*out, *name); err != nil {
		fmt.Fprintln(os.Stderr, "busybox-image:", err)
		os.Exit(1)
	}
}

func run(out, name string) error {
	img, err := testimage.Busybox(testimage.WithName(name))
	if err != nil {
		return err
	}
	var w io.Writer = os.Stdout
	if out != "-" {
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	return img.WriteArchive(w)
}
