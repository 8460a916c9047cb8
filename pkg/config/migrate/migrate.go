// Package migrate converts containerd's configuration (config.toml, format
// versions 2, 3 and 4) into Flotilla's: what a node's containerd was told
// that Flotilla has a setting for, and a note for each setting it has none
// for. It reads containerd's TOML as plain tables, on purpose: it needs
// containerd's names, not its code.
//
// Settings containerd's own `config default` would print with the same
// value say nothing, and are left out (defaults/ holds containerd 1.6's and
// 2.4's, which cover the formats). Settings that come out equal to
// Flotilla's defaults are left out of the result too.
package migrate

import (
	"bytes"
	"embed"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"

	"github.com/pelletier/go-toml/v2"

	"github.com/flotilla-project/flotilla/pkg/config"
)

// Result is a converted configuration.
type Result struct {
	// Version is the format version of containerd's configuration.
	Version int
	// Config is Flotilla's configuration, TOML; config.Load reads it.
	Config []byte
	// Notes say what could not be carried over, and why; one line each.
	Notes []string
}

//go:embed defaults/*.toml
var defaultFiles embed.FS

// Containerd converts containerd's configuration doc, read from source (a
// path, for the result's header).
func Containerd(doc []byte, source string) (*Result, error) {
	var m map[string]any
	if err := toml.Unmarshal(doc, &m); err != nil {
		return nil, fmt.Errorf("containerd configuration %s: %w", source, err)
	}
	version := 1 // containerd's reading of a file without one
	if v, ok := m["version"].(int64); ok {
		version = int(v)
	}
	var defaults []string
	switch version {
	case 2:
		defaults = []string{"containerd-1.6-v2.toml"}
	case 3:
		// 2.x's plugin tables, 1.x's server tables ([grpc], [debug]...).
		defaults = []string{"containerd-2.4-v4.toml", "containerd-1.6-v2.toml"}
	case 4:
		defaults = []string{"containerd-2.4-v4.toml"}
	case 1:
		return nil, fmt.Errorf("containerd configuration %s is version 1, which this reads no more than containerd 2.x does: `containerd config migrate` (containerd 2.x) converts it to version 3", source)
	default:
		return nil, fmt.Errorf("containerd configuration %s: version %d: want 2, 3 or 4", source, version)
	}
	c := &converter{
		in:      m,
		used:    map[string]bool{},
		out:     map[string]any{},
		from:    map[string]string{},
		version: version,
	}
	for _, name := range defaults {
		b, err := defaultFiles.ReadFile("defaults/" + name)
		if err != nil {
			return nil, err
		}
		var d map[string]any
		if err := toml.Unmarshal(b, &d); err != nil {
			return nil, fmt.Errorf("defaults/%s: %w", name, err)
		}
		c.defaults = append(c.defaults, d)
	}
	b, err := config.Default().Marshal()
	if err != nil {
		return nil, err
	}
	if err := toml.Unmarshal(b, &c.flotilla); err != nil {
		return nil, err
	}
	c.convert()
	c.leftOver()
	out := c.render(source)
	if _, err := config.Parse(out); err != nil {
		return nil, fmt.Errorf("the converted configuration does not load (a bug in the conversion): %v\n%s", err, out)
	}
	sort.Strings(c.notes)
	return &Result{Version: version, Config: out, Notes: slices.Compact(c.notes)}, nil
}

// converter carries the state of one conversion.
type converter struct {
	version int
	in      map[string]any
	// used are the containerd keys carried over or accounted for, as
	// paths joined by "\x00" (a key of a table marks all below it).
	used map[string]bool
	// defaults are containerd's defaults for this version, the first that
	// has a key wins.
	defaults []map[string]any
	// flotilla is Flotilla's default configuration as tables.
	flotilla map[string]any
	// out is the converted configuration as tables; from says where each
	// of its keys came from, by the same path keys.
	out   map[string]any
	from  map[string]string
	notes []string
}

func pathKey(path []string) string { return strings.Join(path, "\x00") }

// get returns containerd's value at path and marks it used.
func (c *converter) get(path ...string) (any, bool) {
	v, ok := lookup(c.in, path)
	if ok {
		c.used[pathKey(path)] = true
	}
	return v, ok
}

func (c *converter) str(path ...string) (string, bool) {
	v, ok := c.get(path...)
	s, isStr := v.(string)
	return s, ok && isStr
}

// use marks path (and everything below it) as accounted for.
func (c *converter) use(path ...string) { c.used[pathKey(path)] = true }

// isDefault says whether containerd's value at path is what containerd
// would have had without the file saying it.
func (c *converter) isDefault(path []string, v any) bool {
	for _, d := range c.defaults {
		if dv, ok := lookup(d, path); ok {
			return reflect.DeepEqual(dv, v)
		}
	}
	return isZero(v)
}

// set gives Flotilla's setting at path the value v, taken from
// containerd's key from; a value equal to Flotilla's default is left out.
func (c *converter) set(path []string, v any, from string) {
	if dv, ok := lookup(c.flotilla, path); ok && equalTOML(dv, v) {
		return
	}
	m := c.out
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[path[len(path)-1]] = v
	c.from[pathKey(path)] = from
}

// note says what was not carried over.
func (c *converter) note(format string, args ...any) {
	c.notes = append(c.notes, fmt.Sprintf(format, args...))
}

// leftOver notes every setting of containerd's the conversion neither
// carried over nor accounted for, unless it is containerd's default.
func (c *converter) leftOver() {
	var walk func(m map[string]any, path []string)
	walk = func(m map[string]any, path []string) {
		for _, k := range sortedKeys(m) {
			p := append(append([]string{}, path...), k)
			if c.used[pathKey(p)] {
				continue
			}
			if t, ok := m[k].(map[string]any); ok {
				walk(t, p)
				continue
			}
			if c.isDefault(p, m[k]) {
				continue
			}
			c.note("%s = %s: not carried over%s", keyName(p), value(m[k]), hint(p))
		}
	}
	walk(c.in, nil)
}

// render writes the converted configuration, each value with a comment
// naming containerd's key it came from.
func (c *converter) render(source string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Flotilla's configuration, converted by `flotillad config migrate` from\n# %s (containerd's configuration, version %d).\n", source, c.version)
	b.WriteString("# Settings equal to Flotilla's defaults are left out (`flotillad config default`\n# prints every one); what could not be carried over was said on stderr.\n")
	b.WriteString("version = 1\n")
	var table func(m map[string]any, path []string)
	table = func(m map[string]any, path []string) {
		var subs []string
		wrote := false
		for _, k := range sortedKeys(m) {
			if _, ok := m[k].(map[string]any); ok {
				subs = append(subs, k)
				continue
			}
			if !wrote && len(path) > 0 {
				fmt.Fprintf(&b, "\n[%s]\n", keyName(path))
				wrote = true
			}
			p := append(append([]string{}, path...), k)
			if from := c.from[pathKey(p)]; from != "" {
				fmt.Fprintf(&b, "# from %s\n", from)
			}
			fmt.Fprintf(&b, "%s = %s\n", quoteKey(k), value(m[k]))
		}
		for _, k := range subs {
			table(m[k].(map[string]any), append(append([]string{}, path...), k))
		}
	}
	table(c.out, nil)
	return b.Bytes()
}

// lookup finds the value at path in nested tables.
func lookup(m map[string]any, path []string) (any, bool) {
	var v any = m
	for _, p := range path {
		t, ok := v.(map[string]any)
		if !ok {
			return nil, false
		}
		if v, ok = t[p]; !ok {
			return nil, false
		}
	}
	return v, true
}

// equalTOML compares values as TOML has them ([]string and []any of the
// same strings are equal).
func equalTOML(a, b any) bool {
	return value(a) == value(b)
}

func isZero(v any) bool {
	switch v := v.(type) {
	case nil:
		return true
	case string:
		return v == ""
	case bool:
		return !v
	case int64:
		return v == 0
	case float64:
		return v == 0
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

// value writes v as a TOML value.
func value(v any) string {
	b, err := toml.Marshal(map[string]any{"v": v})
	if err != nil {
		return fmt.Sprint(v)
	}
	s := strings.TrimSpace(string(b))
	return strings.TrimPrefix(s, "v = ")
}

// keyName writes a key path as TOML does, quoting where needed.
func keyName(path []string) string {
	parts := make([]string, len(path))
	for i, p := range path {
		parts[i] = quoteKey(p)
	}
	return strings.Join(parts, ".")
}

func quoteKey(k string) string {
	if k == "" {
		return `""`
	}
	for _, r := range k {
		if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return fmt.Sprintf("%q", k)
		}
	}
	return k
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
