package streaming

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSessionsGetOnlyTheStreamsTheirCallAskedFor(t *testing.T) {
	s := New(nil, nil, Config{})
	s.remember("http://127.0.0.1:1/exec/tok123", askedStreams{stdout: true})
	var seen context.Context
	h := s.serve(httpHandlerFunc(func(ctx context.Context) { seen = ctx }))
	h.ServeHTTP(nil, httptest.NewRequest(http.MethodPost, "/exec/tok123", nil))
	in, out, errw := askedOnly(seen, strings.NewReader("x"), nopCloser{io.Discard}, nopCloser{io.Discard})
	if in != nil || out == nil || errw != nil {
		t.Errorf("streams stdin %v stdout %v stderr %v, want stdout only", in, out, errw)
	}
	if _, ok := s.asked["tok123"]; ok {
		t.Error("a token's streams are kept after its session started")
	}
	// A session whose call is not known (say, after a restart) gets all.
	in, out, errw = askedOnly(context.Background(), strings.NewReader("x"), nopCloser{io.Discard}, nopCloser{io.Discard})
	if in == nil || out == nil || errw == nil {
		t.Error("a session without a known call lost streams")
	}
}

type nopCloser struct{ io.Writer }

func (nopCloser) Close() error { return nil }

// httpHandlerFunc hands the request's context to f.
type httpHandlerFunc func(context.Context)

func (f httpHandlerFunc) ServeHTTP(_ http.ResponseWriter, r *http.Request) { f(r.Context()) }
