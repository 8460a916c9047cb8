// Package logging builds the structured logger each Flotilla process uses:
// one log/slog logger per service, every line carrying the service name.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Options select the level and the line format ("text" or "json").
type Options struct {
	Level  string
	Format string
}

// ParseLevel accepts containerd's level names.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "", "info":
		return slog.LevelInfo, nil
	case "trace", "debug":
		return slog.LevelDebug, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "fatal", "panic":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q", s)
}

// New returns the logger for the named service writing to w.
func New(service string, o Options, w io.Writer) (*slog.Logger, error) {
	lvl, err := ParseLevel(o.Level)
	if err != nil {
		return nil, err
	}
	ho := &slog.HandlerOptions{Level: lvl}
	var h slog.Handler
	switch o.Format {
	case "", "text":
		h = slog.NewTextHandler(w, ho)
	case "json":
		h = slog.NewJSONHandler(w, ho)
	default:
		return nil, fmt.Errorf("unknown log format %q", o.Format)
	}
	return slog.New(h).With("service", service), nil
}

type loggerKey struct{}

// WithLogger returns ctx carrying l, the logger G returns for it and for
// every context derived from it.
func WithLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// G returns the logger ctx carries: the process's, with the fields the call
// has gathered on its way (as containerd's log.G). A context that carries
// none gets slog's default logger, which a process sets to its own at start.
func G(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok && l != nil {
		return l
	}
	return slog.Default()
}

// With returns ctx whose logger adds args (key-value pairs) to every line.
func With(ctx context.Context, args ...any) context.Context {
	return WithLogger(ctx, G(ctx).With(args...))
}
