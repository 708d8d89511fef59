// Command bulkhead-stream-peer drives a streaming URL with client-go, the library kubectl and the API
// server use, and prints what it saw as one JSON object on stdout. Built by ci/go-peer; run by
// runtime/streaming/tests/go_peer.rs.
//
//	bulkhead-stream-peer exec spdy|ws URL TTY(0|1) STDIN|-
//	bulkhead-stream-peer portforward spdy|ws URL REMOTE-PORT MESSAGE CONNECTIONS
//	bulkhead-stream-peer portforward channels URL REMOTE-PORT MESSAGE 1
//
// "channels" is kubelet's own WebSocket port-forward (v4.channel.k8s.io, ports in the query), which
// client-go has no client for: it is spoken here with gorilla/websocket, as browser-side clients do.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gorilla/websocket"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/client-go/util/exec"
)

type sizes struct{ left []remotecommand.TerminalSize }

// Next hands out the sizes one by one, then reports the end of monitoring.
func (s *sizes) Next() *remotecommand.TerminalSize {
	if len(s.left) == 0 {
		return nil
	}
	n := s.left[0]
	s.left = s.left[1:]
	return &n
}

type execResult struct {
	Stdout   string `json:"stdout"`
	Stderr   string `json:"stderr"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error"`
}

// target parses a streaming URL and makes the client configuration for its server.
func target(rawURL string) (*url.URL, *rest.Config, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, err
	}
	return u, &rest.Config{Host: u.Scheme + "://" + u.Host}, nil
}

func runExec(transport, rawURL string, tty bool, stdin string) (any, error) {
	u, cfg, err := target(rawURL)
	if err != nil {
		return nil, err
	}
	var executor remotecommand.Executor
	switch transport {
	case "spdy":
		executor, err = remotecommand.NewSPDYExecutor(cfg, "POST", u)
	case "ws":
		executor, err = remotecommand.NewWebSocketExecutor(cfg, "GET", rawURL)
	default:
		err = fmt.Errorf("unknown transport %q", transport)
	}
	if err != nil {
		return nil, err
	}
	var stdout, stderr bytes.Buffer
	opts := remotecommand.StreamOptions{Stdout: &stdout, Tty: tty}
	if !tty {
		opts.Stderr = &stderr
	}
	if stdin != "-" {
		opts.Stdin = strings.NewReader(stdin)
	}
	if tty {
		opts.TerminalSizeQueue = &sizes{left: []remotecommand.TerminalSize{{Width: 80, Height: 24}, {Width: 100, Height: 30}}}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res := execResult{}
	if err := executor.StreamWithContext(ctx, opts); err != nil {
		var code exec.CodeExitError
		if errors.As(err, &code) {
			res.ExitCode = code.Code
		} else {
			res.ExitCode = -1
		}
		res.Error = err.Error()
	}
	res.Stdout, res.Stderr = stdout.String(), stderr.String()
	return res, nil
}

type forwardResult struct {
	Echoes []string `json:"echoes"`
	Errors string   `json:"errors"`
}

type channelResult struct {
	Subprotocol string   `json:"subprotocol"`
	Opened      []string `json:"opened"`
	Data        string   `json:"data"`
	Errors      string   `json:"errors"`
}

func runChannelPortForward(rawURL string, port int, message string) (any, error) {
	u, _, err := target(rawURL)
	if err != nil {
		return nil, err
	}
	u.Scheme = "ws"
	u.RawQuery = url.Values{"port": {strconv.Itoa(port)}}.Encode()
	dialer := websocket.Dialer{Subprotocols: []string{"v4.channel.k8s.io"}, HandshakeTimeout: 10 * time.Second}
	c, _, err := dialer.Dial(u.String(), nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	res := channelResult{Subprotocol: c.Subprotocol()}
	// The server opens the data and error channels by writing the port on each.
	for i := 0; i < 2; i++ {
		_, m, err := c.ReadMessage()
		if err != nil {
			return nil, err
		}
		if len(m) != 3 {
			return nil, fmt.Errorf("channel opening of %d bytes", len(m))
		}
		res.Opened = append(res.Opened, fmt.Sprintf("%d:%d", m[0], int(m[1])|int(m[2])<<8))
	}
	if err := c.WriteMessage(websocket.BinaryMessage, append([]byte{0}, message...)); err != nil {
		return nil, err
	}
	closed := false
	for {
		_, m, err := c.ReadMessage()
		if err != nil {
			break // the server's close after the forward ended
		}
		if len(m) < 1 {
			continue
		}
		switch m[0] {
		case 0:
			res.Data += string(m[1:])
		case 1:
			res.Errors += string(m[1:])
		}
		// The echo is complete: end the client's side, which is its only way to send EOF.
		if !closed && strings.Contains(res.Data, message) {
			closed = true
			_ = c.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
		}
	}
	return res, nil
}

func runPortForward(transport, rawURL string, port int, message string, conns int) (any, error) {
	if transport == "channels" {
		return runChannelPortForward(rawURL, port, message)
	}
	u, cfg, err := target(rawURL)
	if err != nil {
		return nil, err
	}
	var dialer httpstream.Dialer
	switch transport {
	case "spdy":
		rt, upgrader, err := spdy.RoundTripperFor(cfg)
		if err != nil {
			return nil, err
		}
		dialer = spdy.NewDialer(upgrader, &http.Client{Transport: rt}, "POST", u)
	case "ws":
		dialer, err = portforward.NewSPDYOverWebsocketDialer(u, cfg)
		if err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown transport %q", transport)
	}
	stop, ready := make(chan struct{}), make(chan struct{})
	var errOut bytes.Buffer
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, io.Discard, &errOut)
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		return nil, fmt.Errorf("port-forward ended before it was ready: %v", err)
	case <-time.After(20 * time.Second):
		return nil, errors.New("port-forward not ready in 20s")
	}
	ports, err := fw.GetPorts()
	if err != nil {
		return nil, err
	}
	res := forwardResult{}
	for i := 0; i < conns; i++ {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", ports[0].Local), 5*time.Second)
		if err != nil {
			return nil, err
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		msg := fmt.Sprintf("%s #%d", message, i)
		if _, err := c.Write([]byte(msg)); err != nil {
			return nil, err
		}
		_ = c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			return nil, fmt.Errorf("reading the echo of connection %d: %v", i, err)
		}
		res.Echoes = append(res.Echoes, string(got))
	}
	close(stop)
	<-done
	res.Errors = errOut.String()
	return res, nil
}

func main() {
	if len(os.Args) < 4 {
		fmt.Fprintln(os.Stderr, "usage: bulkhead-stream-peer exec|portforward spdy|ws URL ...")
		os.Exit(2)
	}
	var out any
	var err error
	switch os.Args[1] {
	case "exec":
		if len(os.Args) != 6 {
			err = errors.New("exec needs TTY and STDIN")
			break
		}
		out, err = runExec(os.Args[2], os.Args[3], os.Args[4] == "1", os.Args[5])
	case "portforward":
		if len(os.Args) != 7 {
			err = errors.New("portforward needs REMOTE-PORT, MESSAGE and CONNECTIONS")
			break
		}
		port, perr := strconv.Atoi(os.Args[4])
		conns, cerr := strconv.Atoi(os.Args[6])
		if perr != nil || cerr != nil {
			err = errors.New("bad number")
			break
		}
		out, err = runPortForward(os.Args[2], os.Args[3], port, os.Args[5], conns)
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "peer:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		os.Exit(1)
	}
}
