package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/sys/unix"
)

// The tracker's rows are shown by mpb on a terminal (one bar a blob, sized to
// the terminal's width; rows past its height are left out until others
// finish), and as plain lines anywhere else (a pipe, a log file).

// progressDisplay shows the rows as they change.
type progressDisplay interface {
	update(rows []blobRow)
	// finish shows the rows a last time, then the summary line (none
	// when empty: the operation failed and the error says so).
	finish(rows []blobRow, summary string)
}

// isTerminal says out is a terminal a display may redraw in place.
func isTerminal(out io.Writer) bool {
	f, ok := out.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// newDisplay draws bars on a terminal and prints lines otherwise.
func newDisplay(out io.Writer) progressDisplay {
	if isTerminal(out) {
		return newBarDisplay(out, mpb.WithOutput(out))
	}
	return newPlainDisplay(out)
}

// plainLine is one row as a line: kind, short digest, bytes, state. Its
// first word is the kind and its last the state, for a reader of the log.
func plainLine(r blobRow) string {
	return fmt.Sprintf("%-8s %-19s %17s  %s", r.Kind, r.name(), sizeText(r), r.State)
}

// sizeText is "4.0MiB/8.0MiB" while a blob is written, its size once stored.
func sizeText(r blobRow) string {
	done := r.Offset
	if r.State.stored() || r.State == stateUnpacked {
		done = r.Total
	}
	switch {
	case r.Total <= 0 && r.State != stateDownloading:
		return "-"
	case done >= r.Total && r.Total > 0:
		return bytesString(uint64(r.Total))
	}
	return bytesString(uint64(max(done, 0))) + "/" + bytesString(uint64(max(r.Total, 0)))
}

func rowKey(r blobRow) string {
	if r.Digest != "" {
		return r.Digest.String()
	}
	return "ref:" + r.Ref
}

// plainLineEvery bounds how often a blob still downloading gets a line
// when the output is not a terminal.
const plainLineEvery = 5 * time.Second

// plainDisplay writes a line when a row changes state (a blob starts,
// completes, a layer is unpacked), another every plainLineEvery while a
// blob downloads, and nothing else: the output reads well in a log.
type plainDisplay struct {
	out      io.Writer
	last     map[string]blobState
	lastLine map[string]time.Time
	now      func() time.Time
}

func newPlainDisplay(out io.Writer) *plainDisplay {
	return &plainDisplay{out: out, last: map[string]blobState{}, lastLine: map[string]time.Time{}, now: time.Now}
}

func (d *plainDisplay) update(rows []blobRow) {
	now := d.now()
	for _, r := range rows {
		k := rowKey(r)
		prev, ok := d.last[k]
		if !ok {
			prev = stateWaiting
		}
		d.last[k] = r.State
		changed := r.State != prev
		if r.State == stateDownloading && !changed && now.Sub(d.lastLine[k]) < plainLineEvery {
			continue
		}
		if !changed && r.State != stateDownloading {
			continue
		}
		d.lastLine[k] = now
		if !prev.stored() && r.Fetched && r.State > stateExists {
			// The blob completed and its unpacking began between two
			// polls: say it completed, as a log reader looks for that.
			done := r
			done.State = stateDone
			fmt.Fprintln(d.out, plainLine(done))
		}
		fmt.Fprintln(d.out, plainLine(r))
	}
}

func (d *plainDisplay) finish(rows []blobRow, summary string) {
	d.update(rows)
	if summary != "" {
		fmt.Fprintln(d.out, summary)
	}
}

// barDisplay keeps one mpb bar a row. The bars' decorators load the row at
// each of mpb's refreshes; they take no lock an update holds, as mpb calls
// them from the goroutine an update's SetCurrent waits for.
type barDisplay struct {
	out  io.Writer
	p    *mpb.Progress
	mu   sync.Mutex
	bars map[string]*rowBar
}

type rowBar struct {
	bar   *mpb.Bar
	row   atomic.Pointer[blobRow]
	order int
}

func newBarDisplay(out io.Writer, opts ...mpb.ContainerOption) *barDisplay {
	opts = append([]mpb.ContainerOption{mpb.WithRefreshRate(pollInterval)}, opts...)
	return &barDisplay{out: out, p: mpb.New(opts...), bars: map[string]*rowBar{}}
}

// text is a decorator that shows what fn says of a row.
func (d *barDisplay) text(rb *rowBar, fn func(blobRow) string, wc decor.WC) decor.Decorator {
	return decor.Any(func(decor.Statistics) string {
		r := rb.row.Load()
		if r == nil {
			return ""
		}
		return fn(*r)
	}, wc)
}

func (d *barDisplay) update(rows []blobRow) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, r := range rows {
		k := rowKey(r)
		rb := d.bars[k]
		if rb == nil {
			rb = &rowBar{order: i}
			rb.row.Store(&r)
			rb.bar = d.p.AddBar(0, // completed by finish, not by its count
				mpb.BarPriority(i),
				mpb.PrependDecorators(
					d.text(rb, func(r blobRow) string { return r.Kind }, decor.WC{W: 9, C: decor.DindentRight}),
					d.text(rb, func(r blobRow) string { return r.name() }, decor.WC{W: 20, C: decor.DindentRight}),
				),
				mpb.AppendDecorators(
					d.text(rb, sizeText, decor.WC{W: 18}),
					d.text(rb, func(r blobRow) string { return "  " + r.State.String() }, decor.WC{W: 13, C: decor.DindentRight}),
				),
			)
			d.bars[k] = rb
		} else if rb.order != i {
			// A row moves when what it is becomes known (a blob turns
			// out to be the config, a layer learns its place).
			rb.order = i
			d.p.UpdateBarPriority(rb.bar, i, true)
		}
		rb.row.Store(&r)
		total, done := r.Total, r.Offset
		if r.State.stored() || r.State == stateUnpacked {
			done = total
		}
		if total > 0 {
			rb.bar.SetTotal(total, false)
			rb.bar.SetCurrent(min(done, total))
		}
	}
}

func (d *barDisplay) finish(rows []blobRow, summary string) {
	d.update(rows)
	d.mu.Lock()
	for _, rb := range d.bars {
		// What is not stored now failed; its bar stays where it stopped.
		rb.bar.SetTotal(-1, true)
	}
	d.mu.Unlock()
	d.p.Wait()
	if summary != "" {
		fmt.Fprintln(d.out, summary)
	}
}
