package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"encoding/hex"
	"encoding/json"
	"unicode/utf8"

	"github.com/kopia/kopia/repo/object"
	"github.com/kopia/kopia/snapshot"
	"github.com/kopia/kopia/snapshot/policy"
)

type probe struct {
	Kind     string `json:"kind"`
	Input    string `json:"input,omitempty"`
	InputHex string `json:"input_hex,omitempty"`
	Output   string `json:"output,omitempty"`
	Error    bool   `json:"error,omitempty"`
}

func decodeDir(in []byte) ([]byte, error) {
	var dir snapshot.DirManifest
	if err := json.NewDecoder(bytes.NewReader(in)).Decode(&dir); err != nil {
		return nil, err
	}
	if dir.StreamType != "kopia:directory" {
		return nil, errString("invalid directory stream type")
	}
	return encode(&dir), nil
}

func decodeIndirect(in []byte) ([]byte, error) {
	var ind indirectObject
	if err := json.NewDecoder(bytes.NewReader(in)).Decode(&ind); err != nil {
		return nil, err
	}
	ind.StreamID = "kopia:indirect"
	return encode(ind), nil
}

func decodeSnapshot(in []byte) ([]byte, error) {
	var m snapshot.Manifest
	if err := json.Unmarshal(in, &m); err != nil {
		return nil, err
	}
	return json.Marshal(&m)
}

func decodePolicy(in []byte) ([]byte, error) {
	var p policy.Policy
	if err := json.Unmarshal(in, &p); err != nil {
		return nil, err
	}
	return json.Marshal(&p)
}

type errString string

func (e errString) Error() string { return string(e) }

var _ = object.EmptyID

func probes() {
	dirInputs := []string{
		`{"STREAM":"kopia:directory","Entries":[{"NAME":"a","Type":"f","MODE":"0644","Size":1,"MTime":"2024-05-01T12:00:00+02:00","UID":5,"Obj":"abcd","extra":{"x":[1,2]}}],"summary":{"SIZE":1,"maxtime":"2024-05-01T10:00:00.000Z","unknown":null}} trailing garbage`,
		`{"stream":"kopia:directory","entries":[{"name":"a","mode":"0x1ff"},{"name":"b","mode":"420"},{"name":"c","mode":"0o644"},{"name":"d","mode":"0_644"},{"name":"e","mode":"0b111"},{"name":"f","mode":"0"},{"name":"g","mode":"017777777777"}]}`,
		`{"stream":"kopia:directory","entries":[{"name":"a","mode":"-1"}]}`,
		`{"stream":"kopia:directory","entries":[{"name":"a","mode":"020000000000"}]}`,
		`{"stream":"kopia:directory","entries":[{"name":"a","mode":"09"}]}`,
		`{"stream":"kopia:directory","entries":[{"name":"a","mode":""}]}`,
		`{"stream":"kopia:directory","entries":[{"name":"a","mode":null}]}`,
		`{"stream":"kopia:directory","entries":[{"name":"a","mode":420}]}`,
		`{"stream":"kopia:directory","entries":[{"name":null,"type":null,"mtime":null,"obj":null,"summ":null,"uid":null,"size":null}],"summary":{"maxTime":null,"errors":null}}`,
		`{"stream":"kopia:directory","entries":[{"name":"x","summ":{"errors":[{"path":null,"error":null,"more":1}]}}]}`,
		`{"stream":"kopia:directory-x","entries":null}`,
		`{"entries":null}`,
		`{}`,
		`[]`,
		`null`,
		`{"stream":"kopia:directory","entries":null,"summary":null}`,
		`{"stream":"kopia:directory","entries":{}}`,
		`{"stream":"kopia:directory","entries":[null]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2022-03-22T22:45:22.159239913-07:00"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01t10:00:00z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01 10:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"0001-01-01T00:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"0000-01-01T00:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"9999-12-31T23:59:59.999999999Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:60Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00.1234567891Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00.Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00+24:00"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00+23:59"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00-00:00"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00+00:60"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T1:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00,5Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-02-30T00:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2023-02-29T00:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-02-29T00:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-13-01T00:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T24:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"10000-01-01T00:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"-001-01-01T00:00:00Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00.000000000Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2024-05-01T10:00:00+0200"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"1677-09-21T00:12:43.145224191Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":"2262-04-11T23:47:16.854775808Z"}]}`,
		`{"stream":"kopia:directory","entries":[{"mtime":5}]}`,
		`{"stream":"kopia:directory","entries":[{"size":1.0}]}`,
		`{"stream":"kopia:directory","entries":[{"size":1e2}]}`,
		`{"stream":"kopia:directory","entries":[{"uid":-1}]}`,
		`{"stream":"kopia:directory","entries":[{"uid":4294967296}]}`,
		`{"stream":"kopia:directory","entries":[{"size":9223372036854775808}]}`,
		`{"stream":"kopia:directory","entries":[{"size":-9223372036854775808}]}`,
		`{"stream":"kopia:directory","entries":[{"name":"a","name":"b","obj":"abcd","obj":"kabcd"}]}`,
		`{"ſtream":"kopia:directory","entries":[{"name":"\u00e9\ud83d\ude00\u003c\/"}]}`,
		`{"stream":"kopia:directory","entries":[{"name":"\ud800"}]}`,
		`{"stream":"kopia:directory","entries":[{"obj":"IZabcd"}]}`,
		`{"stream":"kopia:directory","entries":[{"obj":5}]}`,
		`{"stream":"kopia:directory","entries":[{"type":"d","summ":{"size":1,"files":2,"symlinks":3,"dirs":4,"numFailed":5,"numIgnoredErrors":6,"incomplete":"x"}}]}`,
		`{"stream":"kopia:directory","entries":[{"type":"d","summ":5}]}`,
		`{"stream":"kopia:directory","entries":[]`,
		`{"stream":"kopia:directory","entries":[],}`,
		` {"stream":"kopia:directory"}{"stream":"other"}`,
	}
	var out []probe
	add := func(kind string, in []byte, f func([]byte) ([]byte, error)) {
		p := probe{Kind: kind}
		if utf8.Valid(in) {
			p.Input = string(in)
		} else {
			p.InputHex = hex.EncodeToString(in)
		}
		res, err := f(in)
		if err != nil {
			p.Error = true
		} else {
			p.Output = string(res)
		}
		out = append(out, p)
	}
	for _, s := range dirInputs {
		add("dir", []byte(s), decodeDir)
	}
	add("dir", []byte("{\"stream\":\"kopia:directory\",\"entries\":[{\"name\":\"bad\xffutf8\"}]}"), decodeDir)

	for _, s := range []string{
		`{"Stream":"x","ENTRIES":[{"S":1,"L":2,"O":"abcd","x":1}]} trailing`,
		`{"entries":[null,{"o":null}]}`,
		`{"entries":[{"o":"IZabcd"}]}`,
		`{"entries":null}`,
		`{"entries":[{"s":1.5}]}`,
		`{}`,
		`null`,
		`[]`,
	} {
		add("indirect", []byte(s), decodeIndirect)
	}

	for _, s := range []string{
		`{"ID":"abc","Source":{"HOST":"h","username":"u","PATH":"/p","x":1},"startTime":"2024-05-01T12:00:00.5+02:00","rootEntry":{"name":"r","type":"d","obj":"kabcd"},"extra":[1,{"a":2}],"tags":null,"pins":null}`,
		`{"id":"","source":null,"stats":null,"rootEntry":null,"tags":{},"pins":[],"storageStats":null}`,
		`{"incomplete":"checkpoint","tags":{"b":"1","a":"2"},"pins":["z","a","z"],"description":"<&>"}`,
		`{"storageStats":{"newData":{"objectBytes":1},"RUNNINGTOTAL":{"contents":2}}}`,
		`{"stats":{"fileCount":2147483648}}`,
		`{"stats":{"fileCount":-2147483648,"totalSize":-1}}`,
		`{"tags":{"a":null}}`,
		`{"pins":[null,"a"]}`,
		`{} x`,
		`{}`,
		`null`,
		`{"startTime":null,"endTime":"0001-01-01T00:00:00Z"}`,
	} {
		add("snapshot", []byte(s), decodeSnapshot)
	}

	for _, s := range []string{
		`{"RETENTION":{"KeepLatest":1,"keepHourly":null,"future":true},"files":{"ignore":null,"ignoreDotFiles":[null,"a"]},"scheduling":{"timeOfDay":[null,{"hour":1},{"MIN":2,"x":0}]},"actions":{"beforeFolder":null,"afterFolder":{},"beforeSnapshotRoot":{"args":[]}},"osSnapshots":{"volumeShadowCopy":{"enable":2}},"logging":null,"upload":{"parallelUploadAboveSize":null},"noParent":false,"newSection":{"a":1}}`,
		`{"retention":{"keepLatest":1.5}}`,
		`{"osSnapshots":{"volumeShadowCopy":{"enable":256}}}`,
		`{"osSnapshots":{"volumeShadowCopy":{"enable":-1}}}`,
		`{"osSnapshots":{"volumeShadowCopy":{"enable":255}}}`,
		`{"retention":null,"files":null,"noParent":null}`,
		`{"files":{"maxFileSize":"1"}}`,
		`{"compression":{"onlyCompress":"x"}}`,
		`{"actions":{"beforeFolder":{"timeout":9223372036854775807,"mode":"x","path":"p","script":"s","args":["a","<b>"]}}}`,
		`{"retention":{"keepLatest":9223372036854775807,"keepHourly":-9223372036854775808}}`,
		`{"noParent":true}`,
		`{}`,
		`null`,
		`[]`,
		`{"splitter":{"algorithm":"FIXED"}} {}`,
	} {
		add("policy", []byte(s), decodePolicy)
	}

	// Every generated document, read back and rewritten by kopia.
	files, err := os.ReadDir(outDir)
	must(err)
	for _, f := range files {
		n := f.Name()
		in, err := os.ReadFile(filepath.Join(outDir, n))
		must(err)
		switch {
		case strings.HasPrefix(n, "dir_"):
			add("dir", in, decodeDir)
		case strings.HasPrefix(n, "indirect_"):
			add("indirect", in, decodeIndirect)
		case strings.HasPrefix(n, "snapshot_"):
			add("snapshot", in, decodeSnapshot)
		case n == "policy_default.json" || n == "policy_empty.json" || n == "policy_full.json":
			add("policy", in, decodePolicy)
		}
	}

	write("decode_probes.json", encode(out))
}
