package supervisor

import (
	"bytes"
	"fmt"
	"reflect"
	"testing"
)

func TestLogRingKeepsTheLastLinesInOrder(t *testing.T) {
	r := newLogRing(3)
	if got := r.last(10); len(got) != 0 {
		t.Fatalf("empty ring returned %q", got)
	}
	for i := 1; i <= 5; i++ {
		r.add(fmt.Sprint(i))
	}
	if got, want := r.last(0), []string{"3", "4", "5"}; !reflect.DeepEqual(got, want) {
		t.Errorf("last(0) = %q, want %q", got, want)
	}
	if got, want := r.last(2), []string{"4", "5"}; !reflect.DeepEqual(got, want) {
		t.Errorf("last(2) = %q, want %q", got, want)
	}
}

func TestTailWriterKeepsWholeLinesAndPassesThemThrough(t *testing.T) {
	var out bytes.Buffer
	r := newLogRing(10)
	w := &tailWriter{w: &out, ring: r}
	for _, chunk := range []string{"first li", "ne\nsecond\n", "\npartial"} {
		_, _ = w.Write([]byte(chunk))
	}
	if got, want := r.last(0), []string{"first line", "second"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ring holds %q, want %q", got, want)
	}
	if out.String() != "first line\nsecond\n\n" {
		t.Errorf("passed through %q", out.String())
	}
	if w.last() != "partial" {
		t.Errorf("last() = %q, want the unfinished line", w.last())
	}
}
