package blobs

import (
	// go-digest only offers the algorithms whose hash is linked in; the
	// store accepts sha384 and sha512 digests (OCI's registered ones) on its
	// own account, not because some other package happened to link them.
	_ "crypto/sha512"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// MaxRefLen bounds an ingest ref. containerd sets no limit, but refs are kept
// in memory for every active writer and echoed in every status, and real ones
// ("layer-sha256:<hex>", with a namespace and lease prefix added by the
// metadata service) stay far below it.
const MaxRefLen = 1024

// ParseDigest parses a digest received from a client. Only digests that name
// an available algorithm with a well-formed encoding pass, so a digest can
// never carry a path separator or "..".
func ParseDigest(s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("digest %q: %v: %w", s, err, errdefs.ErrInvalidArgument)
	}
	return d, nil
}

func validateDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("digest %q: %v: %w", d, err, errdefs.ErrInvalidArgument)
	}
	return nil
}

// ValidateRef checks an ingest ref. A ref never becomes a path (the ingest
// directory is named by its hash), so slashes and dots are fine; what is
// refused is what no client means: empty, oversized, not UTF-8, or carrying
// control characters that would corrupt logs and listings.
func ValidateRef(ref string) error {
	switch {
	case ref == "":
		return fmt.Errorf("ref must not be empty: %w", errdefs.ErrInvalidArgument)
	case len(ref) > MaxRefLen:
		return fmt.Errorf("ref of %d bytes is longer than %d: %w", len(ref), MaxRefLen, errdefs.ErrInvalidArgument)
	case !utf8.ValidString(ref):
		return fmt.Errorf("ref %q is not valid UTF-8: %w", ref, errdefs.ErrInvalidArgument)
	}
	for _, r := range ref {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("ref %q contains a control character: %w", ref, errdefs.ErrInvalidArgument)
		}
	}
	return nil
}

// ValidateLabels checks labels as containerd does: no empty key, no key
// and value over its size limit.
func ValidateLabels(l map[string]string) error {
	for k, v := range l {
		if k == "" {
			return fmt.Errorf("label with empty key: %w", errdefs.ErrInvalidArgument)
		}
		if err := labels.Validate(k, v); err != nil {
			return err
		}
	}
	return nil
}

// parseFilters parses containerd filter expressions; any one matching is a
// match, and none given matches everything.
func parseFilters(fs []string) (filters.Filter, error) {
	f, err := filters.ParseAll(fs...)
	if err != nil {
		return nil, fmt.Errorf("filters %q: %w", fs, err)
	}
	return f, nil
}

// adaptInfo exposes a blob to filters as digest, size and labels.<key>.
// containerd's own adaptor leaves size out; it is cheap to offer here.
func adaptInfo(info content.Info) filters.Adaptor {
	base := content.AdaptInfo(info)
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) == 1 && fieldpath[0] == "size" {
			return strconv.FormatInt(info.Size, 10), true
		}
		return base.Field(fieldpath)
	})
}

// adaptStatus exposes an ingest to filters as ref and expected.
func adaptStatus(st content.Status) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) != 1 {
			return "", false
		}
		switch fieldpath[0] {
		case "ref":
			return st.Ref, true
		case "expected":
			return st.Expected.String(), st.Expected != ""
		}
		return "", false
	})
}
