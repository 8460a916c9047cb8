package config

// Strict decoding: a name the configuration does not know, anywhere, fails
// Load with the name and its line, and a close known name when there is
// one. go-toml refuses unknown keys of the structs it decodes into and says
// where (StrictMissingError); service options are decoded in a second pass,
// each table into its own service's struct, and what that pass refuses is
// found in the document by its key path (lineOf).

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/flotilla-project/flotilla/pkg/handshake"
)

// checkFormat reads the document's version before anything else: a file in
// another format (containerd's, say) would otherwise fail on its first
// unknown key, which says less.
func checkFormat(doc []byte) error {
	var head struct {
		Version      any `toml:"version"`
		Plugins      any `toml:"plugins"`
		ProxyPlugins any `toml:"proxy_plugins"`
	}
	if err := toml.Unmarshal(doc, &head); err != nil {
		return decodeError(err)
	}
	containerd := ""
	if head.Plugins != nil || head.ProxyPlugins != nil {
		containerd = "; this looks like containerd's configuration: `flotillad config migrate <file>` converts it"
	}
	switch v := head.Version.(type) {
	case nil:
		if containerd != "" {
			return fmt.Errorf(": no version%s", containerd)
		}
		return nil // version 1, the only one there is
	case int64:
		if v == FormatVersion {
			if containerd != "" {
				return fmt.Errorf("%s: plugins and proxy_plugins are containerd's%s", lineOf(doc, "plugins"), containerd)
			}
			return nil
		}
		if containerd == "" && (v == 2 || v == 3 || v == 4) {
			containerd = "; containerd's configuration has this version: `flotillad config migrate <file>` converts it"
		}
		return fmt.Errorf("%s: version %d: this flotillad reads version %d%s", lineOf(doc, "version"), v, FormatVersion, containerd)
	default:
		return fmt.Errorf("%s: version %v: want the integer %d", lineOf(doc, "version"), v, FormatVersion)
	}
}

// decodeStrict decodes doc over c, returning the keys c has no field for
// as errors of their own; err is a document it could not decode. Options
// tables decode as generic tables here.
func decodeStrict(doc []byte, c *Config) (unknown []error, err error) {
	dec := toml.NewDecoder(bytes.NewReader(doc))
	dec.DisallowUnknownFields()
	err = dec.Decode(c)
	var missing *toml.StrictMissingError
	if !errors.As(err, &missing) {
		return nil, decodeError(err)
	}
	var errs []error
	for _, e := range missing.Errors {
		line, _ := e.Position()
		key := []string(e.Key())
		table, name := key[:len(key)-1], key[len(key)-1]
		errs = append(errs, fmt.Errorf(":%d: unknown key %q in %s%s", line, name, tableName(table),
			didYouMean(name, fieldsAt(reflect.TypeOf(c), table))))
	}
	return errs, nil
}

// decodeError gives a go-toml error its line.
func decodeError(err error) error {
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		if k := de.Key(); len(k) > 0 {
			return fmt.Errorf(":%d: %s: %s", line, strings.Join(k, "."), strings.TrimPrefix(de.Error(), "toml: "))
		}
		return fmt.Errorf(":%d: %s", line, strings.TrimPrefix(de.Error(), "toml: "))
	}
	return err
}

// decodeOptions decodes an options table at path in doc (raw, a generic
// table from the first pass) over def, a pointer to the service's options
// struct holding the defaults. Deprecated names are taken as their current
// ones, with a warning in c.Warnings.
func (c *Config) decodeOptions(doc []byte, path []string, raw, def any) (any, error) {
	m, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: %s: want a table", lineOf(doc, path...), strings.Join(path, "."))
	}
	renamed, err := handshake.RenameOptions(m, def)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", lineOf(doc, path...), tableName(path), err)
	}
	for _, r := range renamed {
		old := append(append([]string{}, path...), strings.Split(r.Old, ".")...)
		c.Warnings = append(c.Warnings, fmt.Sprintf("%s: option %s in %s is deprecated: it is now %s",
			lineOf(doc, old...), r.Old, tableName(path), r.New))
	}
	// The table, alone, as a document of its own, into the service's
	// struct: go-toml says which keys it has no field for.
	b, err := toml.Marshal(m)
	if err != nil {
		return nil, err
	}
	dec := toml.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	err = dec.Decode(def)
	var missing *toml.StrictMissingError
	var bad *toml.DecodeError
	switch {
	case errors.As(err, &missing):
		var errs []error
		for _, e := range missing.Errors {
			key := []string(e.Key())
			full := append(append([]string{}, path...), key...)
			table, name := full[:len(full)-1], full[len(full)-1]
			known := fieldsAt(reflect.TypeOf(def), key[:len(key)-1])
			if len(key) == 1 {
				known = append(known, aliasNames(def)...)
			}
			errs = append(errs, fmt.Errorf("%s: unknown option %q in %s%s", lineOf(doc, full...), name, tableName(table),
				didYouMean(name, known)))
		}
		return nil, errors.Join(errs...)
	case errors.As(err, &bad):
		key := append(append([]string{}, path...), bad.Key()...)
		return nil, fmt.Errorf("%s: %s: %s", lineOf(doc, key...), strings.Join(key, "."), strings.TrimPrefix(bad.Error(), "toml: "))
	case err != nil:
		return nil, fmt.Errorf("%s: %w", tableName(path), err)
	}
	if v, ok := def.(interface{ Validate() error }); ok {
		if err := v.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", lineOf(doc, path...), tableName(path), err)
		}
	}
	return def, nil
}

// aliasNames are the deprecated names of an options struct, each as
// "old=new" for didYouMean to suggest the current one.
func aliasNames(opts any) []string {
	a, ok := opts.(handshake.Aliased)
	if !ok {
		return nil
	}
	var out []string
	for old, cur := range a.Aliases() {
		out = append(out, old+"="+cur)
	}
	return out
}

// fieldsAt lists the toml names of the struct at path below t (a map is
// crossed by any key), for suggestions; nil where it is no struct.
func fieldsAt(t reflect.Type, path []string) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if len(path) > 0 {
		switch t.Kind() {
		case reflect.Map:
			return fieldsAt(t.Elem(), path[1:])
		case reflect.Struct:
			for i := 0; i < t.NumField(); i++ {
				if name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ","); name == path[0] {
					return fieldsAt(t.Field(i).Type, path[1:])
				}
			}
		}
		return nil
	}
	if t.Kind() != reflect.Struct {
		return nil
	}
	var out []string
	for i := 0; i < t.NumField(); i++ {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("toml"), ",")
		if name != "" && name != "-" && t.Field(i).IsExported() {
			out = append(out, name)
		}
	}
	return out
}

// didYouMean suggests the known name closest to a mistyped one, when one is
// close enough to be what was meant. A known "old=new" is a deprecated name:
// the current one is suggested.
func didYouMean(name string, known []string) string {
	best, bestDist := "", 3
	for _, k := range known {
		cand, cur, renamed := strings.Cut(k, "=")
		d := editDistance(name, cand)
		if d < bestDist || (d == bestDist && best == "") {
			best, bestDist = cand, d
			if renamed {
				best = cur
			}
		}
	}
	if best == "" || bestDist > 2 || bestDist >= len(name)/2+1 {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is Levenshtein's distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// tableName writes a key path as the TOML table header it is: "the top
// level" for none.
func tableName(path []string) string {
	if len(path) == 0 {
		return "the top level"
	}
	parts := make([]string, len(path))
	for i, p := range path {
		parts[i] = quoteKey(p)
	}
	return "[" + strings.Join(parts, ".") + "]"
}

func quoteKey(k string) string {
	for _, r := range k {
		if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return fmt.Sprintf("%q", k)
		}
	}
	if k == "" {
		return `""`
	}
	return k
}

// lineOf finds where doc first says something of the key path: a table
// header at or below it, or a key-value (dotted keys and inline tables
// followed). It returns ":<line>" for an error message, "" if not found.
func lineOf(doc []byte, path ...string) string {
	var p unstable.Parser
	p.Reset(doc)
	var table []string
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			it := e.Key()
			table = keyParts(it)
			if hasPrefix(table, path) {
				return line(&p, e.Key())
			}
		case unstable.KeyValue:
			if l := findKeyValue(&p, e, table, path); l != "" {
				return l
			}
		}
	}
	return ""
}

func findKeyValue(p *unstable.Parser, kv *unstable.Node, base, path []string) string {
	full := append(append([]string{}, base...), keyParts(kv.Key())...)
	if hasPrefix(full, path) {
		return line(p, kv.Key())
	}
	if v := kv.Value(); hasPrefix(path, full) && v.Kind == unstable.InlineTable {
		it := v.Children()
		for it.Next() {
			if l := findKeyValue(p, it.Node(), full, path); l != "" {
				return l
			}
		}
	}
	return ""
}

func keyParts(it unstable.Iterator) []string {
	var out []string
	for it.Next() {
		out = append(out, string(it.Node().Data))
	}
	return out
}

func line(p *unstable.Parser, it unstable.Iterator) string {
	if !it.Next() {
		return ""
	}
	return fmt.Sprintf(":%d", p.Shape(it.Node().Raw).Start.Line)
}

func hasPrefix(s, prefix []string) bool {
	if len(s) < len(prefix) {
		return false
	}
	for i := range prefix {
		if s[i] != prefix[i] {
			return false
		}
	}
	return true
}

// prefixLines puts prefix before each line of err's message.
func prefixLines(prefix string, err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		if !strings.HasPrefix(l, ":") {
			l = ": " + l
		}
		lines[i] = prefix + l
	}
	return errors.New(strings.Join(lines, "\n"))
}
