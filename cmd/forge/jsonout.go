package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	forgev1 "github.com/orange-forge/forge/gen/forge/v1"
	"github.com/orange-forge/forge/internal/termsafe"
)

// What --json prints. The API's own JSON (protojson) is made for programs that
// decode it with the schema: bytes in base64, 64-bit integers as strings. The
// CLI's is for people and jq: field names as the API's (lowerCamel), zero values
// left out as the API does, but
//   - bytes (output, stderr, payload) as text when they are UTF-8, and otherwise
//     in base64 under the name with "Base64" added (outputBase64), so a reader
//     never has to guess which it got;
//   - every integer as a JSON number;
//   - enums by name, times in RFC 3339 and durations as "1.5s", as protojson;
//   - a task's agent name (agentName) and, for an exec task, its command
//     (command, the argv) beside the API's fields.
// Text is escaped for the terminal by termsafe.JSON (as \uXXXX, so the value
// read back is the same) unless --raw.

// jsonObject is a message as --json prints it.
func jsonObject(m proto.Message) map[string]any {
	return jsonMessage(m.ProtoReflect())
}

func jsonMessage(m protoreflect.Message) map[string]any {
	out := map[string]any{}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		name := fd.JSONName()
		switch {
		case fd.IsMap():
			mm := map[string]any{}
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				mm[k.String()] = jsonValue(fd.MapValue(), mv)
				return true
			})
			out[name] = mm
		case fd.IsList():
			l := v.List()
			arr := make([]any, l.Len())
			for i := range arr {
				arr[i] = jsonValue(fd, l.Get(i))
			}
			out[name] = arr
		case fd.Kind() == protoreflect.BytesKind && !utf8.Valid(v.Bytes()):
			out[name+"Base64"] = base64.StdEncoding.EncodeToString(v.Bytes())
		default:
			out[name] = jsonValue(fd, v)
		}
		return true
	})
	return out
}

func jsonValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		switch fd.Message().FullName() {
		case "google.protobuf.Timestamp", "google.protobuf.Duration":
			b, err := protojson.Marshal(v.Message().Interface())
			var s string
			if err == nil && json.Unmarshal(b, &s) == nil {
				return s
			}
		}
		return jsonMessage(v.Message())
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return string(ev.Name())
		}
		return int32(v.Enum())
	case protoreflect.BytesKind:
		if b := v.Bytes(); utf8.Valid(b) {
			return string(b)
		}
		return base64.StdEncoding.EncodeToString(v.Bytes())
	}
	return v.Interface() // numbers, booleans and strings as they are
}

// jsonTask is a task as --json prints it, with its agent's name when known.
func jsonTask(t *forgev1.TaskInfo, agentName string) map[string]any {
	o := jsonObject(t)
	if agentName != "" {
		o["agentName"] = agentName
	}
	if argv := execArgv(t); argv != nil {
		o["command"] = argv
	}
	return o
}

// writeJSON prints v indented, text escaped by p.
func (m *Main) writeJSON(p termsafe.Printer, v any) error {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, err := m.Stdout.Write(p.JSON(buf.Bytes()))
	return err
}
