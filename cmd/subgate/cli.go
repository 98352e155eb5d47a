package main

// This file is subgate's operator command line: subcommands that talk to a
// running gateway through its admin HTTP API (docs/admin-api.md). main calls
// runCLI when isCLICommand(os.Args[1]); every identifier here starts with
// "cli" so that it cannot collide with the rest of package main.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Exit codes of runCLI.
const (
	cliExitOK    = 0
	cliExitError = 1 // the API answered an error, or it could not be reached
	cliExitUsage = 2 // bad command line, or a command this build lacks
)

// CLI bounds and defaults.
const (
	cliDefaultAddr = "http://127.0.0.1:9100"
	// cliDefaultTimeout exceeds the admin server's default backend timeout
	// (30 s), so a slow platform answer is reported by the server.
	cliDefaultTimeout = 40 * time.Second
	// cliMaxResponse bounds a response body read into memory.
	cliMaxResponse = 16 << 20
	// cliMaxTokenFile and cliMaxSecretFile bound the files read.
	cliMaxTokenFile  = 8 << 10
	cliMaxSecretFile = 8 << 10
)

// cliCommands are the first arguments that select the CLI.
var cliCommands = []string{"devices", "tokens", "status", "ota"}

// isCLICommand reports whether s (os.Args[1]) names a CLI command.
func isCLICommand(s string) bool { return slices.Contains(cliCommands, s) }

// runCLI runs the command in args (args[0] is the command) and returns the
// process exit code.
func runCLI(args []string, stdout, stderr io.Writer) int {
	c := &cliRunner{stdout: stdout, stderr: stderr, getenv: os.Getenv, readFile: cliReadFile, stdin: os.Stdin}
	return c.run(args)
}

const cliUsageText = `usage: subgate <command> [flags]

commands (talk to a running gateway's admin API):
  devices list [-status ONLINE|OFFLINE|INACTIVE] [-prefix P] [-limit N] [-offset N]
  devices show ID          ID is a device id or a node id
  devices delete ID        delete the sub-device on the platform
  devices kick ID          close the device's connection
  tokens set NODE [-secret-file FILE|-]
                           store a device token secret; without -secret-file a
                           random secret is generated and printed once
  tokens revoke NODE       remove a device token secret
  status                   gateway status summary
  ota list [-state S] [-limit N] [-offset N]
                           sub-device upgrade jobs; S is queued, downloading,
                           transferring, applying, succeeded, failed or canceled
  ota cancel ID            cancel an unfinished upgrade job

common flags:
  -addr URL         admin API base URL (env SUBGATE_ADMIN_ADDR, default ` + cliDefaultAddr + `)
  -token-file FILE  file holding the admin bearer token (env SUBGATE_ADMIN_TOKEN_FILE)
  -o table|json     output format (default table)
  -timeout D        request timeout (default ` + "40s" + `)
`

// cliUsageError is a command-line mistake, or a command this build lacks:
// exit code 2. hint adds a pointer to the usage text; quiet means the flag
// package already printed the error and the usage.
type cliUsageError struct {
	msg   string
	hint  bool
	quiet bool
}

func (e *cliUsageError) Error() string { return e.msg }

func cliUsagef(format string, a ...any) error {
	return &cliUsageError{msg: fmt.Sprintf(format, a...), hint: true}
}

// cliAPIError is an error answer of the admin API.
type cliAPIError struct {
	Status  int    `json:"-"`
	Message string `json:"error"`
	Code    string `json:"code"`
}

func (e *cliAPIError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
	}
	return fmt.Sprintf("%s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

type cliRunner struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	getenv         func(string) string
	readFile       func(path string, max int64) ([]byte, error)

	// Set by the common flags.
	addr      string
	tokenFile string
	output    string
	timeout   time.Duration

	base   *url.URL
	token  string
	client *http.Client
}

func (c *cliRunner) run(args []string) int {
	err := c.dispatch(args)
	var uerr *cliUsageError
	switch {
	case err == nil:
		return cliExitOK
	case errors.Is(err, flag.ErrHelp):
		return cliExitOK
	case errors.As(err, &uerr) && uerr.quiet:
		return cliExitUsage
	case errors.As(err, &uerr):
		fmt.Fprintf(c.stderr, "subgate: %v\n", err)
		if uerr.hint {
			fmt.Fprintf(c.stderr, "run 'subgate %s -h' for usage\n", strings.Join(args[:min(len(args), 1)], " "))
		}
		return cliExitUsage
	default:
		fmt.Fprintf(c.stderr, "subgate: %v\n", err)
		return cliExitError
	}
}

func (c *cliRunner) dispatch(args []string) error {
	if len(args) == 0 {
		fmt.Fprint(c.stderr, cliUsageText)
		return cliUsagef("no command")
	}
	cmd, rest := args[0], args[1:]
	sub := ""
	if cmd != "status" {
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			if len(rest) > 0 && (rest[0] == "-h" || rest[0] == "-help" || rest[0] == "--help") {
				fmt.Fprint(c.stdout, cliUsageText)
				return flag.ErrHelp
			}
			return cliUsagef("%s: missing subcommand", cmd)
		}
		sub, rest = rest[0], rest[1:]
	}
	switch cmd + " " + sub {
	case "devices list":
		return c.devicesList(rest)
	case "devices show":
		return c.deviceAction(rest, "show", http.MethodGet, "")
	case "devices delete":
		return c.deviceAction(rest, "delete", http.MethodDelete, "")
	case "devices kick":
		return c.deviceAction(rest, "kick", http.MethodPost, "/kick")
	case "tokens set":
		return c.tokensSet(rest)
	case "tokens revoke":
		return c.tokensRevoke(rest)
	case "status ":
		return c.status(rest)
	case "ota list":
		return c.otaList(rest)
	case "ota cancel":
		return c.otaCancel(rest)
	}
	return cliUsagef("unknown command %q", strings.TrimSpace(cmd+" "+sub))
}

// flagSet returns a flag set with the common flags registered.
func (c *cliRunner) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("subgate "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	addr := c.getenv("SUBGATE_ADMIN_ADDR")
	if addr == "" {
		addr = cliDefaultAddr
	}
	fs.StringVar(&c.addr, "addr", addr, "admin API base URL (env SUBGATE_ADMIN_ADDR)")
	fs.StringVar(&c.tokenFile, "token-file", c.getenv("SUBGATE_ADMIN_TOKEN_FILE"),
		"file holding the admin bearer token (env SUBGATE_ADMIN_TOKEN_FILE)")
	fs.StringVar(&c.output, "o", "table", "output format: table or json")
	fs.DurationVar(&c.timeout, "timeout", cliDefaultTimeout, "request timeout")
	return fs
}

// parse parses args allowing flags before, between and after the
// positional arguments, checks that exactly npos positional arguments were
// given, and prepares the HTTP client.
func (c *cliRunner) parse(fs *flag.FlagSet, args []string, npos int, posName string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, &cliUsageError{msg: err.Error(), quiet: true}
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) != npos {
		if npos == 0 {
			return nil, cliUsagef("%s: unexpected argument %q", fs.Name(), pos[0])
		}
		return nil, cliUsagef("%s: want exactly one %s", fs.Name(), posName)
	}
	if c.output != "table" && c.output != "json" {
		return nil, cliUsagef("-o must be table or json, not %q", c.output)
	}
	if c.timeout <= 0 {
		return nil, cliUsagef("-timeout must be positive")
	}
	if err := c.setup(); err != nil {
		return nil, err
	}
	return pos, nil
}

func (c *cliRunner) setup() error {
	raw := c.addr
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return cliUsagef("-addr %q is not an http(s) URL", c.addr)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return cliUsagef("-addr %q: give only scheme, host, port and an optional path", c.addr)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = strings.TrimRight(u.RawPath, "/")
	c.base = u
	if c.tokenFile != "" {
		b, err := c.readFile(c.tokenFile, cliMaxTokenFile)
		if err != nil {
			return fmt.Errorf("read token file: %w", err)
		}
		c.token = strings.TrimSpace(string(b))
		if c.token == "" {
			return fmt.Errorf("token file %s is empty", c.tokenFile)
		}
	}
	c.client = &http.Client{Timeout: c.timeout}
	return nil
}

// cliReadFile reads at most max bytes of path and fails on larger files.
func cliReadFile(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return cliReadLimited(f, max, path)
}

func cliReadLimited(r io.Reader, max int64, name string) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, max)
	}
	return b, nil
}

// call sends one request to escapedPath (already path-escaped) and decodes
// a 2xx JSON answer into out (when not nil). An error answer becomes a
// *cliAPIError.
func (c *cliRunner) call(method, escapedPath string, query url.Values, body []byte, out any) error {
	target := c.base.Scheme + "://" + c.base.Host + c.base.EscapedPath() + escapedPath
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	res, err := c.client.Do(req)
	if err != nil {
		// err names the method and the URL already.
		return fmt.Errorf("admin API unreachable: %w", err)
	}
	defer res.Body.Close()
	data, err := cliReadLimited(res.Body, cliMaxResponse, "response")
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, target, err)
	}
	if res.StatusCode < 200 || res.StatusCode > 299 {
		apiErr := &cliAPIError{Status: res.StatusCode}
		if json.Unmarshal(data, apiErr) != nil || apiErr.Message == "" {
			apiErr.Message, apiErr.Code = cliSnippet(data, res.Status), ""
		}
		return apiErr
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, target, err)
	}
	return nil
}

// cliSnippet describes a non-JSON error answer by its first line.
func cliSnippet(data []byte, status string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
	if len(line) > 200 {
		line = line[:200] + "..."
	}
	if line == "" {
		return status
	}
	return status + ": " + line
}

// cliDevice is the API's device view (docs/admin-api.md).
type cliDevice struct {
	NodeID    string    `json:"node_id"`
	DeviceID  string    `json:"device_id"`
	ProductID string    `json:"product_id"`
	Name      string    `json:"name"`
	Status    string    `json:"status"`
	FwVersion string    `json:"fw_version"`
	SwVersion string    `json:"sw_version"`
	Remote    string    `json:"remote"`
	Connected time.Time `json:"connected_at"`
	LastSeen  time.Time `json:"last_seen"`
	Online    bool      `json:"online"`
}

type cliDeviceList struct {
	Total   int         `json:"total"`
	Offset  int         `json:"offset"`
	Limit   int         `json:"limit"`
	Devices []cliDevice `json:"devices"`
}

func (c *cliRunner) devicesList(args []string) error {
	fs := c.flagSet("devices list")
	status := fs.String("status", "", "only devices in this status: ONLINE, OFFLINE or INACTIVE")
	prefix := fs.String("prefix", "", "only devices whose node id or device id starts with this")
	limit := fs.Int("limit", 100, "page size (1-1000)")
	offset := fs.Int("offset", 0, "devices to skip")
	if _, err := c.parse(fs, args, 0, ""); err != nil {
		return err
	}
	if *limit < 1 {
		return cliUsagef("-limit must be at least 1")
	}
	if *offset < 0 {
		return cliUsagef("-offset must not be negative")
	}
	q := url.Values{}
	if *status != "" {
		q.Set("status", strings.ToUpper(*status))
	}
	if *prefix != "" {
		q.Set("prefix", *prefix)
	}
	q.Set("limit", strconv.Itoa(*limit))
	q.Set("offset", strconv.Itoa(*offset))
	var raw json.RawMessage
	if err := c.call(http.MethodGet, "/api/v1/devices", q, nil, &raw); err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(raw)
	}
	var l cliDeviceList
	if err := json.Unmarshal(raw, &l); err != nil {
		return fmt.Errorf("decode device list: %w", err)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE ID\tDEVICE ID\tPRODUCT\tSTATUS\tONLINE\tREMOTE\tLAST SEEN")
	for _, d := range l.Devices {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cliCell(d.NodeID), cliCell(d.DeviceID),
			cliCell(d.ProductID), cliCell(d.Status), cliYesNo(d.Online), cliCell(d.Remote), cliTime(d.LastSeen))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(c.stdout, "%d of %d devices (offset %d)\n", len(l.Devices), l.Total, l.Offset)
	return err
}

// deviceAction runs show, delete or kick on one device.
func (c *cliRunner) deviceAction(args []string, name, method, suffix string) error {
	fs := c.flagSet("devices " + name)
	pos, err := c.parse(fs, args, 1, "ID")
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.call(method, "/api/v1/devices/"+url.PathEscape(pos[0])+suffix, nil, nil, &raw); err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(raw)
	}
	var d cliDevice
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("decode device: %w", err)
	}
	switch name {
	case "delete":
		_, err = fmt.Fprintf(c.stdout, "deleted device %s (node %s)\n", d.DeviceID, d.NodeID)
		return err
	case "kick":
		_, err = fmt.Fprintf(c.stdout, "disconnected device %s (node %s)\n", d.DeviceID, d.NodeID)
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	for _, kv := range [][2]string{
		{"NODE ID", d.NodeID}, {"DEVICE ID", d.DeviceID}, {"PRODUCT", d.ProductID}, {"NAME", d.Name},
		{"STATUS", d.Status}, {"ONLINE", cliYesNo(d.Online)}, {"REMOTE", d.Remote},
		{"FW VERSION", d.FwVersion}, {"SW VERSION", d.SwVersion},
		{"CONNECTED AT", cliTime(d.Connected)}, {"LAST SEEN", cliTime(d.LastSeen)},
	} {
		fmt.Fprintf(tw, "%s:\t%s\n", kv[0], cliCell(kv[1]))
	}
	return tw.Flush()
}

type cliTokenResult struct {
	NodeID    string `json:"node_id"`
	Secret    string `json:"secret"`
	Generated bool   `json:"generated"`
	Revoked   bool   `json:"revoked"`
}

func (c *cliRunner) tokensSet(args []string) error {
	fs := c.flagSet("tokens set")
	// The secret comes from a file or stdin, never from a flag value: argv
	// is visible to every local user (go-style §3).
	secretFile := fs.String("secret-file", "", "file holding the secret, or - for stdin (default: generate one)")
	pos, err := c.parse(fs, args, 1, "NODE")
	if err != nil {
		return err
	}
	var body []byte
	if *secretFile != "" {
		var b []byte
		if *secretFile == "-" {
			b, err = cliReadLimited(c.stdin, cliMaxSecretFile, "stdin")
		} else {
			b, err = c.readFile(*secretFile, cliMaxSecretFile)
		}
		if err != nil {
			return fmt.Errorf("read secret: %w", err)
		}
		secret := strings.TrimRight(string(b), "\r\n")
		if secret == "" {
			return cliUsagef("the secret file is empty")
		}
		if body, err = json.Marshal(map[string]string{"secret": secret}); err != nil {
			return fmt.Errorf("encode secret: %w", err)
		}
	}
	var raw json.RawMessage
	if err := c.call(http.MethodPut, "/api/v1/tokens/"+url.PathEscape(pos[0]), nil, body, &raw); err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(raw)
	}
	var tr cliTokenResult
	if err := json.Unmarshal(raw, &tr); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	if tr.Generated {
		_, err = fmt.Fprintf(c.stdout, "token secret for node %s (shown only once, store it now):\n%s\n", tr.NodeID, tr.Secret)
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "token secret stored for node %s\n", tr.NodeID)
	return err
}

func (c *cliRunner) tokensRevoke(args []string) error {
	fs := c.flagSet("tokens revoke")
	pos, err := c.parse(fs, args, 1, "NODE")
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.call(http.MethodDelete, "/api/v1/tokens/"+url.PathEscape(pos[0]), nil, nil, &raw); err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(raw)
	}
	_, err = fmt.Fprintf(c.stdout, "token secret revoked for node %s\n", pos[0])
	return err
}

func (c *cliRunner) status(args []string) error {
	fs := c.flagSet("status")
	if _, err := c.parse(fs, args, 0, ""); err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.call(http.MethodGet, "/api/v1/status", nil, nil, &raw); err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(raw)
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("decode status: %w", err)
	}
	var rows [][2]string
	cliFlatten("", v, &rows)
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

// cliFlatten turns a decoded JSON value into sorted "a.b.c" -> value rows.
func cliFlatten(prefix string, v any, rows *[][2]string) {
	switch t := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			cliFlatten(p, t[k], rows)
		}
	case []any:
		for i, e := range t {
			cliFlatten(prefix+"["+strconv.Itoa(i)+"]", e, rows)
		}
	case nil:
		*rows = append(*rows, [2]string{prefix, "-"})
	default:
		*rows = append(*rows, [2]string{prefix, cliCell(fmt.Sprint(t))})
	}
}

func (c *cliRunner) printJSON(raw json.RawMessage) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("format answer: %w", err)
	}
	buf.WriteByte('\n')
	_, err := c.stdout.Write(buf.Bytes())
	return err
}

// cliCell makes a value safe for one table cell: "-" when empty, and no
// tab, newline or other control character from the server.
func cliCell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

func cliYesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func cliTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// cliOTAJob is the API's OTA job view (docs/admin-api.md, docs/ota.md).
type cliOTAJob struct {
	ID          string    `json:"id"`
	DeviceID    string    `json:"device_id"`
	EventType   string    `json:"event_type"`
	Version     string    `json:"version"`
	Size        int64     `json:"size"`
	State       string    `json:"state"`
	Offset      int64     `json:"offset"`
	Attempts    int       `json:"attempts"`
	ResultCode  int       `json:"result_code"`
	Description string    `json:"description"`
	Updated     time.Time `json:"updated"`
}

type cliOTAJobList struct {
	Total  int         `json:"total"`
	Offset int         `json:"offset"`
	Limit  int         `json:"limit"`
	Jobs   []cliOTAJob `json:"jobs"`
}

// cliOTAStates are the job states the API accepts as a filter.
var cliOTAStates = []string{"queued", "downloading", "transferring", "applying", "succeeded", "failed", "canceled"}

func (c *cliRunner) otaList(args []string) error {
	fs := c.flagSet("ota list")
	state := fs.String("state", "", "only jobs in this state: "+strings.Join(cliOTAStates, ", "))
	limit := fs.Int("limit", 100, "page size (1-1000)")
	offset := fs.Int("offset", 0, "jobs to skip")
	if _, err := c.parse(fs, args, 0, ""); err != nil {
		return err
	}
	st := strings.ToLower(*state)
	if st != "" && !slices.Contains(cliOTAStates, st) {
		return cliUsagef("-state must be one of %s", strings.Join(cliOTAStates, ", "))
	}
	if *limit < 1 {
		return cliUsagef("-limit must be at least 1")
	}
	if *offset < 0 {
		return cliUsagef("-offset must not be negative")
	}
	q := url.Values{}
	if st != "" {
		q.Set("state", st)
	}
	q.Set("limit", strconv.Itoa(*limit))
	q.Set("offset", strconv.Itoa(*offset))
	var raw json.RawMessage
	if err := c.call(http.MethodGet, "/api/v1/ota/jobs", q, nil, &raw); err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(raw)
	}
	var l cliOTAJobList
	if err := json.Unmarshal(raw, &l); err != nil {
		return fmt.Errorf("decode OTA job list: %w", err)
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB ID\tDEVICE ID\tVERSION\tSTATE\tPROGRESS\tATTEMPTS\tRESULT\tUPDATED")
	for _, j := range l.Jobs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", cliCell(j.ID), cliCell(j.DeviceID), cliCell(j.Version),
			cliCell(j.State), cliProgress(j.Offset, j.Size), j.Attempts, cliOTAResult(j), cliTime(j.Updated))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(c.stdout, "%d of %d jobs (offset %d)\n", len(l.Jobs), l.Total, l.Offset)
	return err
}

func (c *cliRunner) otaCancel(args []string) error {
	fs := c.flagSet("ota cancel")
	pos, err := c.parse(fs, args, 1, "ID")
	if err != nil {
		return err
	}
	var raw json.RawMessage
	if err := c.call(http.MethodDelete, "/api/v1/ota/jobs/"+url.PathEscape(pos[0]), nil, nil, &raw); err != nil {
		return err
	}
	if c.output == "json" {
		return c.printJSON(raw)
	}
	var j cliOTAJob
	if err := json.Unmarshal(raw, &j); err != nil {
		return fmt.Errorf("decode OTA job: %w", err)
	}
	_, err = fmt.Fprintf(c.stdout, "canceled OTA job %s (device %s, version %s)\n", cliCell(j.ID), cliCell(j.DeviceID), cliCell(j.Version))
	return err
}

// cliProgress shows a transfer as a percentage of the package.
func cliProgress(off, size int64) string {
	if size <= 0 {
		return "-"
	}
	return strconv.FormatInt(min(max(off, 0), size)*100/size, 10) + "%"
}

// cliOTAResult shows the iotda §4.5 result code of a finished job.
func cliOTAResult(j cliOTAJob) string {
	switch j.State {
	case "succeeded", "failed", "canceled":
		return strconv.Itoa(j.ResultCode)
	}
	return "-"
}
