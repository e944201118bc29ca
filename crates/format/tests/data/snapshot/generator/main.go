// Generates kopia v0.22.3 JSON test vectors for kmover-format with kopia's own types and code.
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kopia/kopia/fs"
	"github.com/kopia/kopia/repo"
	"github.com/kopia/kopia/repo/blob/filesystem"
	"github.com/kopia/kopia/repo/content"
	"github.com/kopia/kopia/repo/content/index"
	"github.com/kopia/kopia/repo/manifest"
	"github.com/kopia/kopia/repo/object"
	"github.com/kopia/kopia/snapshot"
	"github.com/kopia/kopia/snapshot/policy"
	"github.com/kopia/kopia/snapshot/snapshotfs"
)

var outDir string

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func write(name string, data []byte) {
	must(os.WriteFile(filepath.Join(outDir, name), data, 0o644))
}

func encode(v any) []byte {
	var b bytes.Buffer
	must(json.NewEncoder(&b).Encode(v))
	return b.Bytes()
}

func marshal(v any) []byte {
	b, err := json.Marshal(v)
	must(err)
	return b
}

func oid(s string) object.ID {
	id, err := object.ParseID(s)
	must(err)
	return id
}

func ts(s string) fs.UTCTimestamp {
	t, err := time.Parse(time.RFC3339Nano, s)
	must(err)
	return fs.UTCTimestampFromTime(t)
}

func main() {
	outDir = os.Args[1]
	must(os.MkdirAll(outDir, 0o755))

	specDirs()
	errorDirs()
	nameDir()
	timeDir()
	modeDir()
	miscDirs()
	osModes()
	objectIDs()
	indirect()
	snapshots()
	policies()
	merges()
	repoManifests()
	probes()
}

// §4.9 example tree.
func specDirs() {
	zb := &snapshotfs.DirManifestBuilder{}
	zdir := zb.Build(ts("2024-04-30T08:00:00Z"), "")
	write("dir_spec_zdir.json", encode(zdir))

	sb := &snapshotfs.DirManifestBuilder{}
	sb.AddEntry(&snapshot.DirEntry{Name: "main.rs", Type: "f", Permissions: 0o644, FileSize: 42, ModTime: ts("2024-05-01T10:00:02.5Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("1b2c3d4e5f60718293a4b5c6d7e8f901")})
	src := sb.Build(ts("2024-05-01T09:59:00Z"), "")
	write("dir_spec_src.json", encode(src))

	pb := &snapshotfs.DirManifestBuilder{}
	pb.AddEntry(&snapshot.DirEntry{Name: "README.md", Type: "f", Permissions: 0o644, FileSize: 13, ModTime: ts("2024-05-01T10:00:00.123456789Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("9f86d081884c7d659a2feaa0c55ad015")})
	pb.AddEntry(&snapshot.DirEntry{Name: "a&b<c>.txt", Type: "f", Permissions: 0o644, FileSize: 1, ModTime: ts("2024-05-01T10:00:05Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("ffeeddccbbaa99887766554433221100")})
	pb.AddEntry(&snapshot.DirEntry{Name: "empty.txt", Type: "f", Permissions: 0o600, FileSize: 0, ModTime: ts("2024-05-01T10:00:01Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("e3b0c44298fc1c149afbf4c8996fb924")})
	pb.AddEntry(&snapshot.DirEntry{Name: "link", Type: "s", Permissions: 0o777, FileSize: 9, ModTime: ts("2024-05-01T10:00:03Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("a3c5e7f9b1d3f5a7c9e1b3d5f7a9c1e3")})
	pb.AddEntry(&snapshot.DirEntry{Name: "tool", Type: "f", Permissions: snapshot.Permissions(os.ModeSetuid | 0o755), FileSize: 5, ModTime: ts("2024-05-01T10:00:04Z"), ObjectID: oid("0a1b2c3d4e5f60718293a4b5c6d7e8f9")})
	pb.AddEntry(&snapshot.DirEntry{Name: "src", Type: "d", Permissions: 0o755, ModTime: ts("2024-05-01T09:59:00Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("k5d41402abc4b2a76b9719d911017c592"), DirSummary: src.Summary})
	pb.AddEntry(&snapshot.DirEntry{Name: "Zdir", Type: "d", Permissions: 0o700, ModTime: ts("2024-04-30T08:00:00Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("k7d793037a0760186574b0282f2f435e7"), DirSummary: zdir.Summary})
	write("dir_spec_proj.json", encode(pb.Build(ts("2024-05-01T10:00:06Z"), "")))
}

type fakeErr string

func (e fakeErr) Error() string { return string(e) }

// Summaries with failures: child failures propagate, errors are sorted and not truncated.
func errorDirs() {
	cb := &snapshotfs.DirManifestBuilder{}
	cb.AddEntry(&snapshot.DirEntry{Name: "ok.txt", Type: "f", Permissions: 0o644, FileSize: 2, ModTime: ts("2024-05-01T10:00:00Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("00112233445566778899aabbccddeeff")})
	for i := 12; i >= 0; i-- {
		cb.AddFailedEntry(fmt.Sprintf("child/f%02d<&>.txt", i), i%3 == 0, fakeErr(fmt.Sprintf("unable to open file: open /abs/child/f%02d: permission denied", i)))
	}
	cb.AddFailedEntry("child/bad\xffname", false, fakeErr("error with \"quotes\" and \xfe byte"))
	child := cb.Build(ts("2024-05-01T09:00:00Z"), "checkpoint")
	write("dir_errors_child.json", encode(child))

	pb := &snapshotfs.DirManifestBuilder{}
	pb.AddFailedEntry("z-last", true, fakeErr("ignored"))
	pb.AddEntry(&snapshot.DirEntry{Name: "child", Type: "d", Permissions: 0o755, ModTime: ts("2024-05-01T09:00:00Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("Ik00112233445566778899aabbccddeeff"), DirSummary: child.Summary})
	pb.AddFailedEntry("a-first", false, fakeErr("fatal"))
	write("dir_errors_parent.json", encode(pb.Build(ts("2024-05-01T08:00:00Z"), "canceled")))
}

var trickyNames = []string{
	"a&b<c>.txt",
	"quote\"back\\slash/",
	"tab\there\nnl\rcr\x01\x08\x0c\x1f\x7f",
	"\x00nul",
	"é-ünï-日本-😀",
	"\u2028ls\u2029ps",
	"\xff",
	"bad\xffutf8",
	"\xe2\x82a",
	"\xed\xa0\x80surrogate",
	"\xc0\x80overlong",
	"\xf4\x90\x80\x80toobig",
	"trunc\xf0\x9f\x98",
	"\x80cont",
	"\xef\xbf\xbdreal-fffd",
	"\xf0\x9f\x98\x80ok\xf0\x9f",
	"",
	"Zupper",
	"zlower",
	"~tilde",
}

func nameDir() {
	b := &snapshotfs.DirManifestBuilder{}
	for i, n := range trickyNames {
		b.AddEntry(&snapshot.DirEntry{Name: n, Type: "f", Permissions: 0o644, FileSize: int64(i + 1), ModTime: fs.UTCTimestamp(1714557600000000000 + int64(i)), UserID: 1, GroupID: 2, ObjectID: oid(fmt.Sprintf("%032x", i))})
	}
	b.AddEntry(&snapshot.DirEntry{Name: "d\xffir", Type: "d", Permissions: 0o755, ObjectID: oid("k0123456789abcdef0123456789abcdef"), DirSummary: &fs.DirectorySummary{TotalDirCount: 1}})
	b.AddEntry(&snapshot.DirEntry{Name: "Dir", Type: "d", Permissions: 0o755, ObjectID: oid("kfedcba9876543210fedcba9876543210"), DirSummary: &fs.DirectorySummary{TotalDirCount: 1}})
	write("dir_names.json", encode(b.Build(0, "")))
}

var trickyTimes = []fs.UTCTimestamp{
	0,
	1,
	-1,
	1_000_000_000,
	-1_000_000_001,
	math.MaxInt64,
	math.MinInt64,
	fs.UTCTimestampFromTime(time.Time{}),
	fs.UTCTimestampFromTime(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)),
	1714557600_500000000,
	1714557600_120000000,
	1714557600_123456789,
	1714557600_000000100,
	1714557600_000000000,
}

func timeDir() {
	b := &snapshotfs.DirManifestBuilder{}
	for i, t := range trickyTimes {
		b.AddEntry(&snapshot.DirEntry{Name: fmt.Sprintf("t%02d", i), Type: "f", ModTime: t, ObjectID: oid("abcd")})
	}
	write("dir_times.json", encode(b.Build(-5, "")))

	// An empty directory takes its own mtime as maxTime, here one that wraps.
	e := &snapshotfs.DirManifestBuilder{}
	write("dir_empty_wrapped_time.json", encode(e.Build(fs.UTCTimestampFromTime(time.Time{}), "limit reached")))
}

var trickyModes = []snapshot.Permissions{
	0,
	1,
	0o644,
	0o777,
	snapshot.Permissions(os.ModeSetuid | 0o755),
	snapshot.Permissions(os.ModeSetgid | 0o775),
	snapshot.Permissions(os.ModeSticky | 0o777),
	snapshot.Permissions(fs.ModBits),
	snapshot.Permissions(os.ModeSymlink | 0o777),
	snapshot.Permissions(os.ModeDir | 0o755),
	snapshot.Permissions(os.ModeType | os.ModePerm),
}

func modeDir() {
	b := &snapshotfs.DirManifestBuilder{}
	uids := []uint32{0, 1, 1000, math.MaxUint32}
	sizes := []int64{0, 1, -5, math.MaxInt64, math.MinInt64}
	types := []snapshot.EntryType{"f", "s", "", "x", "f"}
	for i, m := range trickyModes {
		b.AddEntry(&snapshot.DirEntry{
			Name: fmt.Sprintf("m%02d", i), Type: types[i%len(types)], Permissions: m,
			FileSize: sizes[i%len(sizes)], UserID: uids[i%len(uids)], GroupID: uids[(i+1)%len(uids)],
			ModTime: 1, ObjectID: oid(fmt.Sprintf("%032x", i+100)),
		})
	}
	write("dir_modes.json", encode(b.Build(0, "")))
}

func miscDirs() {
	// Not produced by kopia's builder but readable: an allocated empty slice and a nil summary.
	write("dir_empty_slice_nil_summary.json", encode(&snapshot.DirManifest{StreamType: "kopia:directory", Entries: []*snapshot.DirEntry{}}))
	write("dir_nil_summary.json", encode(&snapshot.DirManifest{StreamType: "kopia:directory"}))

	// Summary fields at their extremes, on a file entry (as in a single-file root).
	s := &fs.DirectorySummary{TotalFileSize: math.MaxInt64, TotalFileCount: -1, TotalSymlinkCount: 3, TotalDirCount: 0, MaxModTime: math.MinInt64, IncompleteReason: "limit reached", FatalErrorCount: math.MaxInt64, IgnoredErrorCount: -2,
		FailedEntries: []*fs.EntryWithError{{EntryPath: "", Error: ""}, {EntryPath: "p", Error: "e"}}}
	write("dir_summary_extremes.json", encode(&snapshot.DirManifest{StreamType: "kopia:directory", Entries: []*snapshot.DirEntry{
		{Name: "f", Type: "f", ObjectID: oid("Zabcd"), DirSummary: s},
		{Name: "g", Type: "f", ObjectID: oid("IIxabcd")},
		{ObjectID: object.EmptyID},
	}, Summary: s}))
}

// Real lstat of files with given Unix modes: Go FileMode & ModBits as kopia stores them.
func osModes() {
	dir, err := os.MkdirTemp("", "modes")
	must(err)
	defer os.RemoveAll(dir)

	syscall.Umask(0)

	var lines []string
	for _, m := range []uint32{0, 0o644, 0o600, 0o755, 0o4755, 0o2775, 0o1777, 0o7777, 0o6711, 0o1000} {
		for _, kind := range []string{"file", "dir"} {
			p := filepath.Join(dir, fmt.Sprintf("%s-%o", kind, m))
			if kind == "file" {
				must(os.WriteFile(p, nil, 0o600))
			} else {
				must(os.Mkdir(p, 0o700))
			}
			must(syscall.Chmod(p, m))
			var st syscall.Stat_t
			must(syscall.Lstat(p, &st))
			fi, err := os.Lstat(p)
			must(err)
			perm := snapshot.Permissions(fi.Mode() & fs.ModBits)
			b := []byte("omitted")
			if perm != 0 {
				b, err = json.Marshal(perm)
				must(err)
			}
			lines = append(lines, fmt.Sprintf("%s %o %s", kind, st.Mode&0o7777, b))
		}
	}
	l := filepath.Join(dir, "link")
	must(os.Symlink("target", l))
	fi, err := os.Lstat(l)
	must(err)
	b, _ := json.Marshal(snapshot.Permissions(fi.Mode() & fs.ModBits))
	lines = append(lines, fmt.Sprintf("symlink 777 %s", b))
	write("os_modes.txt", []byte(strings.Join(lines, "\n")+"\n"))
}

func objectIDs() {
	inputs := []string{
		"", "abcd", "Dabcd", "IIabcd", "Zabcd", "Df0f0", "IDf0f0", "IIDf0f0", "Dxf0f0", "IDxf0f0", "IIDxf0f0",
		"Dxf0f", "IDxf0f", "Da", "Daf0f0", "B!$@#$!@#$", "X", "I.", "I.x", "I.af", "Ix.ag", "Iab.", "I1", "I1,", "I-1,X",
		"Xsomething", "IZabcd", "ZIabcd", "ZDabcd", "ZDkabcd", "DZabcd", "kabcd", "Ikabcd", "IIkabcd", "Zkabcd", "xabcd", "Ixabcd",
		"ABCD", "kABCD", "I", "Z", "D", "II", "ID", "k", "kk", "gabcd", "zabcd", "fabcd", "habcd",
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef00",
		"k0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
		"IIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIIkabcd",
	}
	var lines []string
	for _, s := range inputs {
		id, err := object.ParseID(s)
		if err != nil {
			lines = append(lines, fmt.Sprintf("%q err", s))
			continue
		}
		b, _ := json.Marshal(id)
		lines = append(lines, fmt.Sprintf("%q ok %s dir=%v", s, b, snapshotfs.IsDirectoryID(id)))
	}
	write("object_ids.txt", []byte(strings.Join(lines, "\n")+"\n"))
}

// Same shape as kopia's unexported indirectObject (repo/object/object_reader.go).
type indirectObject struct {
	StreamID string                       `json:"stream"`
	Entries  []object.IndirectObjectEntry `json:"entries"`
}

func indirect() {
	write("indirect_spec.json", encode(indirectObject{StreamID: "kopia:indirect", Entries: []object.IndirectObjectEntry{
		{Start: 0, Length: 7561258, Object: oid("3f1c0e4d5a6b7c8d9e0f1a2b3c4d5e6f")},
		{Start: 7561258, Length: 3145347, Object: oid("a0b1c2d3e4f5061728394a5b6c7d8e9f")},
		{Start: 10706605, Length: 1234, Object: oid("0f1e2d3c4b5a69788796a5b4c3d2e1f0")},
	}}))
	write("indirect_mixed.json", encode(indirectObject{StreamID: "kopia:indirect", Entries: []object.IndirectObjectEntry{
		{Start: 0, Length: 0, Object: oid("Zabcd")},
		{Start: 0, Length: 5, Object: oid("IIxabcd")},
		{Start: 5, Length: math.MaxInt64, Object: object.EmptyID},
		{Start: -1, Length: -2, Object: oid("kabcd")},
	}}))
	write("indirect_nil.json", encode(indirectObject{StreamID: "kopia:indirect"}))
}

func specManifest() *snapshot.Manifest {
	return &snapshot.Manifest{
		Source:      snapshot.SourceInfo{Host: "laptop", UserName: "alice", Path: "/home/alice/proj"},
		Description: "",
		StartTime:   ts("2024-05-01T10:05:00.250000001Z"),
		EndTime:     ts("2024-05-01T10:05:01.75Z"),
		Stats:       snapshot.Stats{TotalFileSize: 61, TotalFileCount: 5, NonCachedFiles: 5, TotalDirectoryCount: 3},
		RootEntry: &snapshot.DirEntry{Name: "proj", Type: "d", Permissions: 0o755, ModTime: ts("2024-05-01T10:00:06Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("k0f343b0931126a20f133d67c2b018a3b"),
			DirSummary: &fs.DirectorySummary{TotalFileSize: 61, TotalFileCount: 5, TotalSymlinkCount: 1, TotalDirCount: 3, MaxModTime: ts("2024-05-01T10:00:05Z")}},
		Tags: map[string]string{"tag:env": "prod"},
		Pins: []string{"keep-forever"},
	}
}

func checkpointManifest() *snapshot.Manifest {
	return &snapshot.Manifest{
		Source:           snapshot.SourceInfo{Host: "laptop", UserName: "alice", Path: "/home/alice/proj"},
		StartTime:        ts("2024-05-01T10:05:00.250000001Z"),
		EndTime:          ts("2024-05-01T10:50:00Z"),
		IncompleteReason: "checkpoint",
		RootEntry: &snapshot.DirEntry{Name: "proj", Type: "d", Permissions: 0o755, ModTime: ts("2024-05-01T10:00:06Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("k0f343b0931126a20f133d67c2b018a3b"),
			DirSummary: &fs.DirectorySummary{TotalFileSize: 61, TotalFileCount: 5, TotalSymlinkCount: 1, TotalDirCount: 3, MaxModTime: ts("2024-05-01T10:00:05Z"), IncompleteReason: "checkpoint"}},
	}
}

func trickyManifest() *snapshot.Manifest {
	return &snapshot.Manifest{
		ID:               "8c0b9d2a3f7e4b1c9a6d5e4f3a2b1c0d",
		Source:           snapshot.SourceInfo{Host: "h<&>", UserName: "ü\"ser", Path: "C:\\Users\\x\u2028"},
		Description:      "multi\nline <desc> & \x01 é",
		StartTime:        0,
		EndTime:          math.MinInt64,
		Stats:            snapshot.Stats{TotalFileSize: math.MaxInt64, ExcludedTotalFileSize: -1, TotalFileCount: math.MaxInt32, CachedFiles: math.MinInt32, NonCachedFiles: 1, TotalDirectoryCount: 2, ExcludedFileCount: 3, ExcludedDirCount: 4, IgnoredErrorCount: 5, ErrorCount: 6},
		IncompleteReason: "limit reached",
		Tags:             map[string]string{"tag:b": "2", "tag:a": "1", "tag:B": "upper", "tag:é": "<&>", "tag:": "", "a": "no-prefix"},
		StorageStats: &snapshot.StorageStats{
			NewData:      snapshot.StorageUsageDetails{ObjectBytes: 1, OriginalContentBytes: 2, PackedContentBytes: 3, FileObjectCount: 4, DirObjectCount: 5, ContentCount: 6},
			RunningTotal: snapshot.StorageUsageDetails{ObjectBytes: -1},
		},
		Pins: []string{"a", "b<c>"},
	}
}

func fileRootManifest() *snapshot.Manifest {
	return &snapshot.Manifest{
		Source:    snapshot.SourceInfo{Host: "laptop", UserName: "alice", Path: "/home/alice/file.bin"},
		StartTime: ts("2024-05-01T10:05:00Z"),
		EndTime:   ts("2024-05-01T10:05:00.000000001Z"),
		Stats:     snapshot.Stats{TotalFileSize: 12, TotalFileCount: 1, NonCachedFiles: 1},
		RootEntry: &snapshot.DirEntry{Name: "file.bin", Type: "f", Permissions: 0o640, FileSize: 10, ModTime: ts("2024-05-01T10:00:00Z"), UserID: 1000, GroupID: 1000, ObjectID: oid("Ixffeeddccbbaa99887766554433221100"),
			DirSummary: &fs.DirectorySummary{TotalFileSize: 12, TotalFileCount: 1, MaxModTime: ts("2024-05-01T10:00:00Z")}},
		Tags: map[string]string{},
		Pins: []string{},
	}
}

func snapshots() {
	write("snapshot_spec.json", marshal(specManifest()))
	write("snapshot_checkpoint.json", marshal(checkpointManifest()))
	write("snapshot_tricky.json", marshal(trickyManifest()))
	write("snapshot_file_root.json", marshal(fileRootManifest()))
}

func ob(b bool) *policy.OptionalBool { v := policy.OptionalBool(b); return &v }
func oi(i int) *policy.OptionalInt  { v := policy.OptionalInt(i); return &v }
func oi64(i int64) *policy.OptionalInt64 {
	v := policy.OptionalInt64(i)
	return &v
}
func ld(i int) *policy.LogDetail { v := policy.LogDetail(i); return &v }

func fullPolicy() *policy.Policy {
	mode := policy.OSSnapshotWhenAvailable
	return &policy.Policy{
		RetentionPolicy: policy.RetentionPolicy{KeepLatest: oi(0), KeepHourly: oi(-1), KeepDaily: oi(math.MaxInt64), KeepWeekly: oi(4), KeepMonthly: oi(5), KeepAnnual: oi(6), IgnoreIdenticalSnapshots: ob(true)},
		FilesPolicy: policy.FilesPolicy{IgnoreRules: []string{"*.tmp", "/build<&>", "!keep"}, NoParentIgnoreRules: true, DotIgnoreFiles: []string{".kopiaignore", ".gitignore"}, NoParentDotIgnoreFiles: true,
			IgnoreCacheDirectories: ob(false), MaxFileSize: -7, OneFileSystem: ob(true)},
		ErrorHandlingPolicy: policy.ErrorHandlingPolicy{IgnoreFileErrors: ob(true), IgnoreDirectoryErrors: ob(false), IgnoreUnknownTypes: ob(false)},
		SchedulingPolicy: policy.SchedulingPolicy{IntervalSeconds: 3600, TimesOfDay: []policy.TimeOfDay{{Hour: 23, Minute: 59}, {Hour: 0, Minute: 0}}, NoParentTimesOfDay: true, Manual: true,
			Cron: []string{"0 * * * * # hourly <&>"}, RunMissed: ob(false)},
		CompressionPolicy:         policy.CompressionPolicy{CompressorName: "zstd", OnlyCompress: []string{".txt", ".log"}, NoParentOnlyCompress: true, NeverCompress: []string{".zip"}, NoParentNeverCompress: true, MinSize: 1, MaxSize: math.MaxInt64},
		MetadataCompressionPolicy: policy.MetadataCompressionPolicy{CompressorName: "none"},
		SplitterPolicy:            policy.SplitterPolicy{Algorithm: "DYNAMIC-1M-BUZHASH"},
		Actions: policy.ActionsPolicy{
			BeforeFolder:       &policy.ActionCommand{Command: "/bin/sh", Arguments: []string{"-c", "echo <hi> & bye"}, TimeoutSeconds: 30, Mode: "essential"},
			AfterFolder:        &policy.ActionCommand{},
			BeforeSnapshotRoot: &policy.ActionCommand{Script: "#!/bin/sh\necho \"root\"\n", TimeoutSeconds: -1, Mode: "async"},
			AfterSnapshotRoot:  &policy.ActionCommand{Command: "x", Mode: "optional"},
		},
		OSSnapshotPolicy: policy.OSSnapshotPolicy{VolumeShadowCopy: policy.VolumeShadowCopyPolicy{Enable: &mode}},
		LoggingPolicy: policy.LoggingPolicy{
			Directories: policy.DirLoggingPolicy{Snapshotted: ld(10), Ignored: ld(0)},
			Entries:     policy.EntryLoggingPolicy{Snapshotted: ld(1), Ignored: ld(2), CacheHit: ld(3), CacheMiss: ld(-4)},
		},
		UploadPolicy: policy.UploadPolicy{MaxParallelSnapshots: oi(2), MaxParallelFileReads: oi(16), ParallelUploadAboveSize: oi64(math.MinInt64)},
		NoParent:     true,
	}
}

func policies() {
	write("policy_default.json", marshal(policy.DefaultPolicy))
	write("policy_empty.json", marshal(&policy.Policy{}))
	write("policy_full.json", marshal(fullPolicy()))
}

// Flattens a Definition into "json.path=source" lines (source printed as user@host:path).
func flattenDefinition(prefix string, v reflect.Value, out *[]string) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		fv := v.Field(i)
		if si, ok := fv.Interface().(snapshot.SourceInfo); ok {
			if si != (snapshot.SourceInfo{}) {
				*out = append(*out, fmt.Sprintf("%s%s=%s@%s:%s", prefix, name, si.UserName, si.Host, si.Path))
			}
			continue
		}
		flattenDefinition(prefix+name+".", fv, out)
	}
}

type mergeInput struct {
	Target snapshot.SourceInfo `json:"target"`
	Policy json.RawMessage     `json:"policy"`
}

type mergeCase struct {
	Source     snapshot.SourceInfo `json:"source"`
	Policies   []mergeInput        `json:"policies"`
	Merged     json.RawMessage     `json:"merged"`
	Definition []string            `json:"definition"`
}

func withTarget(p *policy.Policy, si snapshot.SourceInfo) *policy.Policy {
	p.Labels = policy.LabelsForSource(si)
	return p
}

func runMerge(si snapshot.SourceInfo, pols []*policy.Policy) mergeCase {
	c := mergeCase{Source: si}
	for _, p := range pols {
		c.Policies = append(c.Policies, mergeInput{Target: p.Target(), Policy: marshal(p)})
	}
	merged, def := policy.MergePolicies(pols, si)
	c.Merged = marshal(merged)
	flattenDefinition("", reflect.ValueOf(*def), &c.Definition)
	return c
}

func merges() {
	alice := snapshot.SourceInfo{Host: "laptop", UserName: "alice", Path: "/home/alice/proj"}
	aliceHome := snapshot.SourceInfo{Host: "laptop", UserName: "alice", Path: "/home/alice"}
	aliceUser := snapshot.SourceInfo{Host: "laptop", UserName: "alice"}
	host := snapshot.SourceInfo{Host: "laptop"}
	global := snapshot.SourceInfo{}

	var cases []mergeCase

	// Everything merges down to defaults.
	cases = append(cases, runMerge(alice, []*policy.Policy{
		withTarget(&policy.Policy{
			RetentionPolicy:   policy.RetentionPolicy{KeepLatest: oi(3)},
			FilesPolicy:       policy.FilesPolicy{IgnoreRules: []string{"x"}, MaxFileSize: 0},
			CompressionPolicy: policy.CompressionPolicy{OnlyCompress: []string{".b", ".a"}, NeverCompress: []string{".z"}},
			SchedulingPolicy:  policy.SchedulingPolicy{TimesOfDay: []policy.TimeOfDay{{Hour: 10, Minute: 0}, {Hour: 1, Minute: 30}}},
			Actions: policy.ActionsPolicy{BeforeFolder: &policy.ActionCommand{Command: "before"}, AfterFolder: &policy.ActionCommand{Command: "after"},
				BeforeSnapshotRoot: &policy.ActionCommand{Command: "root"}},
			LoggingPolicy: policy.LoggingPolicy{Entries: policy.EntryLoggingPolicy{CacheHit: ld(10)}},
		}, alice),
		withTarget(&policy.Policy{
			RetentionPolicy:   policy.RetentionPolicy{KeepLatest: oi(5), KeepDaily: oi(2)},
			FilesPolicy:       policy.FilesPolicy{IgnoreRules: []string{"y", "z"}, NoParentIgnoreRules: true, DotIgnoreFiles: []string{".ignore"}, MaxFileSize: 100, OneFileSystem: ob(true)},
			CompressionPolicy: policy.CompressionPolicy{CompressorName: "s2-default", OnlyCompress: []string{".c", ".a"}, NoParentOnlyCompress: true, MinSize: 10},
			SchedulingPolicy:  policy.SchedulingPolicy{TimesOfDay: []policy.TimeOfDay{{Hour: 10, Minute: 0}, {Hour: 2, Minute: 0}}, Cron: []string{"a"}, Manual: true},
			Actions:           policy.ActionsPolicy{BeforeFolder: &policy.ActionCommand{Command: "parent-before"}, AfterSnapshotRoot: &policy.ActionCommand{Script: "s"}},
			UploadPolicy:      policy.UploadPolicy{MaxParallelFileReads: oi(3)},
		}, aliceHome),
		withTarget(&policy.Policy{
			CompressionPolicy: policy.CompressionPolicy{CompressorName: "zstd", OnlyCompress: []string{".d"}, NeverCompress: []string{".y", ".z"}, MaxSize: 99},
			SchedulingPolicy:  policy.SchedulingPolicy{IntervalSeconds: 60, Cron: []string{"b"}, RunMissed: ob(false)},
			SplitterPolicy:    policy.SplitterPolicy{Algorithm: "FIXED-4M"},
		}, aliceUser),
		withTarget(&policy.Policy{
			ErrorHandlingPolicy: policy.ErrorHandlingPolicy{IgnoreFileErrors: ob(true)},
			OSSnapshotPolicy:    policy.OSSnapshotPolicy{VolumeShadowCopy: policy.VolumeShadowCopyPolicy{Enable: func() *policy.OSSnapshotMode { m := policy.OSSnapshotAlways; return &m }()}},
		}, host),
		withTarget(&policy.Policy{RetentionPolicy: policy.RetentionPolicy{KeepAnnual: oi(0)}, MetadataCompressionPolicy: policy.MetadataCompressionPolicy{CompressorName: "zstd-better-compression"}}, global),
	}))

	// noParent in the middle: no defaults, no folder actions.
	cases = append(cases, runMerge(alice, []*policy.Policy{
		withTarget(&policy.Policy{Actions: policy.ActionsPolicy{BeforeFolder: &policy.ActionCommand{Command: "before"}}, SchedulingPolicy: policy.SchedulingPolicy{NoParentTimesOfDay: true, TimesOfDay: []policy.TimeOfDay{{Hour: 5, Minute: 5}, {Hour: 5, Minute: 5}}}}, alice),
		withTarget(&policy.Policy{RetentionPolicy: policy.RetentionPolicy{KeepHourly: oi(1)}, SchedulingPolicy: policy.SchedulingPolicy{TimesOfDay: []policy.TimeOfDay{{Hour: 6, Minute: 0}}}, NoParent: true}, aliceHome),
		withTarget(&policy.Policy{RetentionPolicy: policy.RetentionPolicy{KeepDaily: oi(9)}}, global),
	}))

	// No policies at all: defaults only.
	cases = append(cases, runMerge(alice, nil))

	// Stored global default policy plus an empty source policy.
	cases = append(cases, runMerge(alice, []*policy.Policy{
		withTarget(&policy.Policy{}, alice),
		withTarget(fullPolicyWithParent(), global),
	}))

	write("policy_merges.json", encode(cases))
}

func fullPolicyWithParent() *policy.Policy {
	p := fullPolicy()
	p.NoParent = false
	return p
}

// A real repository: manifests written and merged by kopia's own manifest manager.
func repoManifests() {
	ctx := context.Background()
	base, err := os.MkdirTemp("", "kopia-repo")
	must(err)
	defer os.RemoveAll(base)

	st, err := filesystem.New(ctx, &filesystem.Options{Path: filepath.Join(base, "storage")}, true)
	must(err)
	must(repo.Initialize(ctx, st, &repo.NewRepositoryOptions{}, "password"))
	cfg := filepath.Join(base, "repo.config")
	must(repo.Connect(ctx, cfg, st, "password", &repo.ConnectOptions{CachingOptions: content.CachingOptions{CacheDirectory: filepath.Join(base, "cache")}}))
	rep, err := repo.Open(ctx, cfg, "password", &repo.Options{})
	must(err)

	alice := snapshot.SourceInfo{Host: "laptop", UserName: "alice", Path: "/home/alice/proj"}

	var checkpointID manifest.ID
	must(repo.WriteSession(ctx, rep, repo.WriteSessionOptions{Purpose: "one"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		_, err := snapshot.SaveSnapshot(ctx, w, specManifest())
		must(err)
		checkpointID, err = snapshot.SaveSnapshot(ctx, w, checkpointManifest())
		must(err)
		must(policy.SetPolicy(ctx, w, policy.GlobalPolicySourceInfo, policy.DefaultPolicy))
		must(policy.SetPolicy(ctx, w, snapshot.SourceInfo{Host: "laptop"}, &policy.Policy{RetentionPolicy: policy.RetentionPolicy{KeepLatest: oi(7)}}))
		must(policy.SetPolicy(ctx, w, snapshot.SourceInfo{Host: "laptop", UserName: "alice", Path: "/home"}, &policy.Policy{CompressionPolicy: policy.CompressionPolicy{CompressorName: "zstd", OnlyCompress: []string{".txt"}}}))
		_, err = w.PutManifest(ctx, map[string]string{"type": "custom<&>", "é": "ü\u2028", "a": ""}, map[string]any{"z": 1, "a": []any{"<x>", nil, true}})
		return err
	}))

	must(repo.WriteSession(ctx, rep, repo.WriteSessionOptions{Purpose: "two"}, func(ctx context.Context, w repo.RepositoryWriter) error {
		must(w.DeleteManifest(ctx, checkpointID))
		must(policy.SetPolicy(ctx, w, snapshot.SourceInfo{Host: "laptop"}, &policy.Policy{RetentionPolicy: policy.RetentionPolicy{KeepLatest: oi(8)}, NoParent: false}))
		must(policy.SetPolicy(ctx, w, alice, &policy.Policy{CompressionPolicy: policy.CompressionPolicy{OnlyCompress: []string{".md"}}, Actions: policy.ActionsPolicy{BeforeFolder: &policy.ActionCommand{Command: "b"}}}))
		m := trickyManifest()
		m.Source = snapshot.SourceInfo{Host: "laptop", UserName: "bob", Path: "/srv/<data>"}
		m.Tags = map[string]string{"tag:b": "2", "tag:a": "1"}
		_, err := snapshot.SaveSnapshot(ctx, w, m)
		return err
	}))
	must(rep.Close(ctx))

	rep, err = repo.Open(ctx, cfg, "password", &repo.Options{})
	must(err)
	defer rep.Close(ctx)

	dr := rep.(repo.DirectRepository)
	var ids []content.ID
	must(dr.ContentReader().IterateContents(ctx, content.IterateOptions{Range: index.PrefixRange("m")}, func(ci content.Info) error {
		ids = append(ids, ci.ContentID)
		return nil
	}))
	sort.Slice(ids, func(i, j int) bool { return ids[i].String() < ids[j].String() })
	for i, id := range ids {
		gz, err := dr.ContentReader().GetContent(ctx, id)
		must(err)
		write(fmt.Sprintf("manifest_content_%d.gz", i), gz)
		r, err := gzip.NewReader(bytes.NewReader(gz))
		must(err)
		plain, err := io.ReadAll(r)
		must(err)
		write(fmt.Sprintf("manifest_content_%d.json", i), plain)
	}

	live, err := rep.FindManifests(ctx, map[string]string{})
	must(err)
	sort.Slice(live, func(i, j int) bool { return live[i].ID < live[j].ID })
	write("manifest_live.json", encode(live))

	type effective struct {
		Source     snapshot.SourceInfo `json:"source"`
		Merged     json.RawMessage     `json:"merged"`
		Definition []string            `json:"definition"`
		Sources    []string            `json:"sources"`
	}
	var effs []effective
	for _, si := range []snapshot.SourceInfo{alice, {Host: "laptop", UserName: "alice", Path: "/home/alice"}, {Host: "laptop", UserName: "bob", Path: "/"}, {Host: "other", UserName: "carol", Path: "/x/y"}, {Host: "laptop", UserName: "alice"}} {
		merged, def, srcs, err := policy.GetEffectivePolicy(ctx, rep, si)
		must(err)
		e := effective{Source: si, Merged: marshal(merged)}
		flattenDefinition("", reflect.ValueOf(*def), &e.Definition)
		for _, s := range srcs {
			e.Sources = append(e.Sources, s.Target().String())
		}
		effs = append(effs, e)
	}
	write("policy_effective.json", encode(effs))
}
