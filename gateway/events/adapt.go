package events

import (
	"strconv"
	"strings"

	// Registers containerd's event types, so event.<field> filters can
	// decode them and use their generated Field methods.
	_ "github.com/containerd/containerd/api/events"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/typeurl/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// envelopeAdaptor exposes an envelope to containerd filters: namespace,
// topic, and event.<field...> as containerd's Envelope.Field does. The event
// is decoded at most once, on the first event.* lookup.
type envelopeAdaptor struct {
	env     *types.Envelope
	decoded bool
	event   any
}

func newEnvelopeAdaptor(env *types.Envelope) *envelopeAdaptor {
	return &envelopeAdaptor{env: env}
}

func (a *envelopeAdaptor) Field(fieldpath []string) (string, bool) {
	if len(fieldpath) == 0 {
		return "", false
	}
	switch fieldpath[0] {
	case "namespace":
		return a.env.Namespace, a.env.Namespace != ""
	case "topic":
		return a.env.Topic, a.env.Topic != ""
	case "event":
		if !a.decoded {
			a.decoded = true
			if a.env.Event != nil {
				if v, err := typeurl.UnmarshalAny(a.env.Event); err == nil {
					a.event = v
				}
			}
		}
		return eventField(a.event, fieldpath[1:])
	}
	return "", false
}

type fielder interface {
	Field([]string) (string, bool)
}

// eventField reads fieldpath from a decoded event. containerd's own events
// have generated Field methods; for any other proto message (a Flotilla
// service's own event types) the fields are read by reflection, so filters
// work on them too.
func eventField(v any, fieldpath []string) (string, bool) {
	if f, ok := v.(fielder); ok {
		return f.Field(fieldpath)
	}
	if m, ok := v.(proto.Message); ok {
		return messageField(m.ProtoReflect(), fieldpath)
	}
	return "", false
}

func messageField(m protoreflect.Message, fieldpath []string) (string, bool) {
	if len(fieldpath) == 0 || !m.IsValid() {
		return "", false
	}
	fields := m.Descriptor().Fields()
	fd := fields.ByTextName(fieldpath[0])
	if fd == nil {
		fd = fields.ByJSONName(fieldpath[0])
	}
	if fd == nil || fd.IsList() {
		return "", false
	}
	if !m.Has(fd) {
		return "", false
	}
	v := m.Get(fd)
	if fd.IsMap() {
		// Like containerd's labels: the rest of the path is the key.
		if len(fieldpath) < 2 || fd.MapKey().Kind() != protoreflect.StringKind {
			return "", false
		}
		mv := v.Map().Get(protoreflect.ValueOfString(strings.Join(fieldpath[1:], ".")).MapKey())
		if !mv.IsValid() {
			return "", false
		}
		return scalar(fd.MapValue(), mv, nil)
	}
	return scalar(fd, v, fieldpath[1:])
}

func scalar(fd protoreflect.FieldDescriptor, v protoreflect.Value, rest []string) (string, bool) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return eventField(v.Message().Interface(), rest)
	}
	if len(rest) > 0 {
		return "", false
	}
	var s string
	switch fd.Kind() {
	case protoreflect.StringKind:
		s = v.String()
	case protoreflect.BytesKind:
		s = string(v.Bytes())
	case protoreflect.BoolKind:
		s = strconv.FormatBool(v.Bool())
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			s = string(ev.Name())
		} else {
			s = strconv.Itoa(int(v.Enum()))
		}
	default:
		s = v.String()
	}
	return s, s != ""
}
