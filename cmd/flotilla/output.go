package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"
)

// A listing is printed as a table of one-word columns (scripts split rows
// on blanks; the last column alone may hold spaces), as JSON, or as YAML with
// the same field names as the JSON.

// writeJSON prints v indented, as kubectl and nerdctl do.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// writeYAML prints v as YAML with its JSON field names and order: the JSON
// is read back as a YAML node (JSON is YAML), whose flow style is dropped.
func writeYAML(out io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return err
	}
	blockStyle(&n)
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	_, err = out.Write(buf.Bytes())
	return err
}

func blockStyle(n *yaml.Node) {
	n.Style &^= yaml.FlowStyle | yaml.DoubleQuotedStyle
	for _, c := range n.Content {
		blockStyle(c)
	}
}

// writeList prints items in the format asked for: names alone with -q, else
// JSON, YAML or the table table() draws.
func writeList[T any](out io.Writer, o outputFlags, items []T, name func(T) string, table func(*tabwriter.Writer)) error {
	if o.quiet {
		for _, it := range items {
			fmt.Fprintln(out, name(it))
		}
		return nil
	}
	switch o.format {
	case "json":
		if items == nil {
			items = []T{} // [] rather than null
		}
		return writeJSON(out, items)
	case "yaml":
		if items == nil {
			items = []T{}
		}
		return writeYAML(out, items)
	}
	tw := tabwriter.NewWriter(out, 0, 8, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneWord replaces blanks so a value stays one table column.
func oneWord(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Join(strings.Fields(s), "_")
}

// bytesString is a size in binary units with no blank ("20.1MiB"), so it is
// one column of a table.
func bytesString(b uint64) string {
	const unit = 1024
	if b < unit {
		return fmt.Sprintf("%dB", b)
	}
	div, exp := uint64(unit), 0
	for n := b / unit; n >= unit; n /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(b)/float64(div), "KMGTPE"[exp])
}
