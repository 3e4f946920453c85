/*
Copyright 2021 The Kubernetes Authors.
Copyright 2026 The kinepy authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

// Package testserver is kinepy's drop-in replacement for
// k8s.io/apiserver/pkg/storage/etcd3/testserver: the same two functions with the
// same signatures, but RunEtcd starts a `python3 -m kinepy` process on a fresh
// database (SQLite by default, or a new PostgreSQL/MariaDB database) instead of
// an embedded etcd.
//
// tests/apiserver/run.sh copies this file over
// pkg/storage/etcd3/testserver/test_server.go in a copy of the k8s.io/apiserver
// module, so Kubernetes' own storage tests run unchanged against kinepy.
//
// Environment:
//
//	KINEPY_REPO         kinepy checkout (PYTHONPATH); default: found by walking up from the working directory
//	KINEPY_PYTHON       Python interpreter; default python3
//	KINEPY_TEST_LOG_DIR keep every server's log there (one file per RunEtcd call); default: the test's
//	                    temp dir, and the log's tail is printed when the test fails
//	KINEPY_LOG_LEVEL    passed through to kinepy (default here: info)
//	KINEPY_WORKERS      passed through to kinepy (default here: 1)
//	KINEPY_APISERVER_DATASTORE
//	                    the backend: a kinepy --datastore-endpoint template containing "{db}",
//	                    e.g. postgres://kinepy:pw@127.0.0.1:5432/{db}?sslmode=disable or
//	                    mysql://kinepy:pw@tcp(127.0.0.1:3306)/{db}. Every RunEtcd replaces {db}
//	                    with a new name kt_<24 hex digits>, which kinepy creates, so each test
//	                    gets an empty store at revision 1 as with upstream's fresh embedded etcd.
//	                    The databases are not dropped here (the launcher has no SQL client);
//	                    whoever owns the server drops kt_* afterwards or throws it away.
//	                    Unset or empty: a fresh SQLite file in the config's Dir.
package testserver

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

const (
	readyTimeout = 60 * time.Second // same bound as upstream's wait for ReadyNotify
	stopTimeout  = 10 * time.Second // SIGTERM, then SIGKILL
	logTailLines = 80
)

// getAvailablePort returns a TCP port that is available for binding.
func getAvailablePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("could not bind to a port: %v", err)
	}
	// It is possible but unlikely that someone else will bind this port before kinepy does.
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// NewTestConfig returns an embed.Config used only as a carrier of the settings
// RunEtcd honours: ListenClientUrls[0] (a free loopback port), Dir (a fresh
// t.TempDir() that holds the SQLite database), UnsafeNoFsync and
// WatchProgressNotifyInterval (tests set it to 1s).
func NewTestConfig(t testing.TB) *embed.Config {
	cfg := embed.NewConfig()
	cfg.UnsafeNoFsync = true

	port, err := getAvailablePort()
	if err != nil {
		t.Fatal(err)
	}
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}

	cfg.Dir = t.TempDir()
	os.Chmod(cfg.Dir, 0700)
	return cfg
}

var autoPortLock sync.Mutex

// RunEtcd starts a kinepy server with the provided config (or NewTestConfig(t)
// if nil) on a fresh database (see KINEPY_APISERVER_DATASTORE), waits until it answers
// Maintenance.Status, and returns a client connected to it, with KV and
// Kubernetes wrapped in the storage testing recorders like upstream. The server
// is stopped when the test ends.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()

	if cfg == nil {
		// if we have to autopick free ports, lock until we successfully start the server on the ports we chose
		autoPortLock.Lock()
		defer autoPortLock.Unlock()
		cfg = NewTestConfig(t)
	}
	if len(cfg.ListenClientUrls) == 0 {
		t.Fatal("kinepy testserver: config has no client URL")
	}
	host := cfg.ListenClientUrls[0].Host
	endpoint := "http://" + host

	srv := startKinepy(t, cfg, host)

	statusCli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 2 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.FatalLevel)).Named("etcd-ready-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.waitReady(statusCli, endpoint); err != nil {
		statusCli.Close()
		srv.dumpLog(t)
		t.Fatal(err)
	}
	statusCli.Close()

	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 10 * time.Second,
		DialOptions: []grpc.DialOption{grpc.WithBlock()},
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	client.KV = storagetesting.NewKVRecorder(client.KV)
	client.Kubernetes = storagetesting.NewKubernetesRecorder(client.Kubernetes)
	return client
}

type kinepyServer struct {
	cmd      *exec.Cmd
	logPath  string
	exited   chan struct{} // closed when the process has exited
	waitErr  error         // valid once exited is closed
	stopping atomic.Bool
}

var (
	helpOnce        sync.Once
	hasProgressFlag bool
	logCounter      atomic.Int64
	unsafeFileChars = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)
	repoRootOnce    sync.Once
	repoRoot        string
	repoRootFailure error
)

func findRepoRoot() (string, error) {
	repoRootOnce.Do(func() {
		if r := os.Getenv("KINEPY_REPO"); r != "" {
			repoRoot, repoRootFailure = filepath.Abs(r)
			return
		}
		dir, err := os.Getwd()
		if err != nil {
			repoRootFailure = err
			return
		}
		for {
			if fileExists(filepath.Join(dir, "kinepy", "__main__.py")) && fileExists(filepath.Join(dir, "pyproject.toml")) {
				repoRoot = dir
				return
			}
			parent := filepath.Dir(dir)
			if parent == dir {
				repoRootFailure = errors.New("kinepy checkout not found above the working directory; set KINEPY_REPO")
				return
			}
			dir = parent
		}
	})
	return repoRoot, repoRootFailure
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func python() string {
	if p := os.Getenv("KINEPY_PYTHON"); p != "" {
		return p
	}
	return "python3"
}

func pythonEnv(repo string) []string {
	env := os.Environ()
	pp := repo
	if old := os.Getenv("PYTHONPATH"); old != "" {
		pp = repo + string(os.PathListSeparator) + old
	}
	return append(env, "PYTHONPATH="+pp, "PYTHONUNBUFFERED=1")
}

// supportsProgressFlag reports whether this kinepy has --watch-progress-notify-interval.
func supportsProgressFlag(repo string) bool {
	helpOnce.Do(func() {
		cmd := exec.Command(python(), "-m", "kinepy", "--help")
		cmd.Dir = repo
		cmd.Env = pythonEnv(repo)
		out, _ := cmd.CombinedOutput()
		hasProgressFlag = strings.Contains(string(out), "--watch-progress-notify-interval")
	})
	return hasProgressFlag
}

func startKinepy(t testing.TB, cfg *embed.Config, host string) *kinepyServer {
	t.Helper()
	repo, err := findRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := cfg.Dir
	if dir == "" {
		dir = t.TempDir()
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		t.Fatal(err)
	}
	datastore, err := datastoreEndpoint(dir)
	if err != nil {
		t.Fatal(err)
	}

	args := []string{"-m", "kinepy",
		"--listen-address", host,
		"--datastore-endpoint", datastore,
	}
	if cfg.UnsafeNoFsync {
		args = append(args, "--unsafe-no-fsync")
	}
	env := pythonEnv(repo)
	if os.Getenv("KINEPY_LOG_LEVEL") == "" {
		env = append(env, "KINEPY_LOG_LEVEL=info")
	}
	if os.Getenv("KINEPY_WORKERS") == "" {
		// One serving process, as every test fixture of kinepy's (the CLI's default is --workers auto);
		// set KINEPY_WORKERS to run Kubernetes' storage tests against several workers.
		env = append(env, "KINEPY_WORKERS=1")
	}
	interval := cfg.WatchProgressNotifyInterval
	if interval == 0 {
		interval = cfg.ExperimentalWatchProgressNotifyInterval
	}
	if interval == 0 {
		interval = 10 * time.Minute // etcd's default (DefaultWatchProgressNotifyInterval)
	}
	if interval > 0 {
		secs := strconv.FormatFloat(interval.Seconds(), 'f', -1, 64)
		env = append(env, "KINEPY_WATCH_PROGRESS_NOTIFY_INTERVAL="+secs)
		if supportsProgressFlag(repo) {
			args = append(args, "--watch-progress-notify-interval", secs+"s")
		}
	}

	logDir := os.Getenv("KINEPY_TEST_LOG_DIR")
	if logDir == "" {
		logDir = dir
	} else if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := unsafeFileChars.ReplaceAllString(t.Name(), "_")
	logPath := filepath.Join(logDir, fmt.Sprintf("%s.%d.kinepy.log", name, logCounter.Add(1)))
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(logFile, "# %s %s\n", python(), strings.Join(args, " "))

	cmd := exec.Command(python(), args...)
	cmd.Dir = repo
	cmd.Env = env
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // keep terminal signals (Ctrl-C) for the test binary
		Pdeathsig: syscall.SIGKILL, // never outlive a test binary that is killed (e.g. -test.timeout)
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("starting kinepy: %v", err)
	}
	s := &kinepyServer{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		s.waitErr = cmd.Wait()
		logFile.Close()
		close(s.exited)
	}()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() && os.Getenv("KINEPY_TEST_LOG_DIR") == "" {
			s.dumpLog(t)
		}
	})
	go func() {
		<-s.exited
		if !s.stopping.Load() {
			// Like upstream's `t.Error(<-e.Err())`: the server must not die during a test.
			defer func() { _ = recover() }() // the test may already be over
			t.Errorf("kinepy exited during the test: %v (log: %s)", s.waitErr, s.logPath)
		}
	}()
	return s
}

// datastoreEndpoint is kinepy's --datastore-endpoint for one RunEtcd: a new database
// named from KINEPY_APISERVER_DATASTORE's {db} if that is set, else dir/state.db on SQLite.
func datastoreEndpoint(dir string) (string, error) {
	template := os.Getenv("KINEPY_APISERVER_DATASTORE")
	if template == "" {
		return "sqlite://" + filepath.Join(dir, "state.db"), nil // sqlite:///abs/path/state.db
	}
	if !strings.Contains(template, "{db}") {
		// One shared database would carry revisions and keys from test to test.
		return "", fmt.Errorf("KINEPY_APISERVER_DATASTORE=%q has no {db} placeholder for a fresh database per test", template)
	}
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return strings.ReplaceAll(template, "{db}", "kt_"+hex.EncodeToString(b[:])), nil
}

func (s *kinepyServer) waitReady(cli *clientv3.Client, endpoint string) error {
	deadline := time.Now().Add(readyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-s.exited:
			return fmt.Errorf("kinepy exited before it was ready: %v", s.waitErr)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Status(ctx, endpoint)
		cancel()
		if err == nil {
			return nil
		}
		lastErr = err
		time.Sleep(50 * time.Millisecond)
	}
	s.stop()
	return fmt.Errorf("kinepy did not answer Maintenance.Status within %v: %v", readyTimeout, lastErr)
}

func (s *kinepyServer) stop() {
	s.stopping.Store(true)
	select {
	case <-s.exited:
		return
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(stopTimeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *kinepyServer) dumpLog(t testing.TB) {
	f, err := os.Open(s.logPath)
	if err != nil {
		return
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > logTailLines {
			lines = lines[1:]
		}
	}
	t.Logf("last %d lines of the kinepy log %s:\n%s", len(lines), s.logPath, strings.Join(lines, "\n"))
}
