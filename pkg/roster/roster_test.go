package roster

import (
	"reflect"
	"strings"
	"testing"
)

func TestEveryRequirementIsAnEarlierService(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range Services {
		if e.Build == nil {
			t.Errorf("service %s has no constructor", e.Name)
		}
		for _, r := range e.Requires {
			if r == Snapshotters {
				r = "snapshotter"
			}
			if !seen[r] {
				t.Errorf("service %s requires %s, which is not listed before it", e.Name, r)
			}
		}
		if seen[e.Name] {
			t.Errorf("service %s is listed twice", e.Name)
		}
		seen[e.Name] = true
	}
}

func TestLookupFindsASnapshotterProcessByItsName(t *testing.T) {
	for name, want := range map[string]string{"content": "content", "snapshotter-overlayfs": "snapshotter", "snapshotter": "snapshotter"} {
		e, ok := Lookup(name)
		if !ok || e.Name != want {
			t.Errorf("Lookup(%q) = %q, %v; want %q", name, e.Name, ok, want)
		}
	}
	for _, name := range []string{"", "content-x", "snapshotter-", "gateway"} {
		if e, ok := Lookup(name); ok {
			t.Errorf("Lookup(%q) found %s", name, e.Name)
		}
	}
}

// The configuration decodes a service's options by their toml names and
// the service by their json names: the two must agree, and every option
// says what it is where `flotillad config default` prints it.
func TestOptionsAreNamedAlikeForConfigAndServiceAndCommented(t *testing.T) {
	for _, e := range Services {
		if e.Options == nil {
			continue
		}
		a, b := e.Options(), e.Options()
		if a == b {
			t.Errorf("service %s: Options returns the same value twice; want a new one each call", e.Name)
		}
		checkOptionFields(t, e.Name, reflect.TypeOf(a))
	}
}

func checkOptionFields(t *testing.T, where string, typ reflect.Type) {
	if typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct {
		t.Errorf("%s: options are a %s; want a struct", where, typ)
		return
	}
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		tname, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		jname, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if tname == "-" {
			continue // the service's alone (set by hand, not by the config)
		}
		if tname == "" || tname != jname {
			t.Errorf("%s.%s: toml name %q, json name %q; want both, equal", where, f.Name, tname, jname)
		}
		if f.Tag.Get("comment") == "" {
			t.Errorf("%s.%s: no comment tag; `flotillad config default` prints one per option", where, tname)
		}
		if f.Type.Kind() == reflect.Struct {
			checkOptionFields(t, where+"."+tname, f.Type)
		}
	}
}
