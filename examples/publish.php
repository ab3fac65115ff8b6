<?php
// Publishing to pyhasses from PHP.  Copy the function you need.
//
//   require 'publish.php';
//   $ack = pyhasses_publish('room1', "any text; with = and\nline breaks", 'chat');
//   echo $ack['delivered'];            // how many browsers got it
//
// Run directly to try it:  php publish.php room1 'hello from PHP'
// (PYHASSES_PORT overrides the control port 8085, PYHASSES_FIFO uses the FIFO).

// Over the TCP control port, with an acknowledgement.  The JSON form keeps
// the message intact whatever it holds.  Throws when pyhasses is not there
// or refuses the message.
function pyhasses_publish(string $token, string $data, ?string $event = null,
                          string $host = '127.0.0.1', int $port = 8085, float $timeout = 2.0): array
{
    $message = ['to' => $token, 'data' => $data, 'ack' => true];
    if ($event !== null) {
        $message['event'] = $event;
    }
    $sock = @fsockopen($host, $port, $errno, $errstr, $timeout);
    if ($sock === false) {
        throw new RuntimeException("pyhasses: cannot connect to $host:$port: $errstr");
    }
    stream_set_timeout($sock, (int) ceil($timeout));
    fwrite($sock, json_encode($message, JSON_THROW_ON_ERROR) . "\n");
    stream_socket_shutdown($sock, STREAM_SHUT_WR);  // "that was all": pyhasses answers and closes
    $reply = stream_get_contents($sock);
    fclose($sock);
    $ack = json_decode((string) $reply, true);
    if (!is_array($ack) || empty($ack['ok'])) {
        throw new RuntimeException('pyhasses refused the message: ' . ($ack['error'] ?? trim((string) $reply)));
    }
    return $ack;
}

// Through the FIFO (-fifo=PATH): no reply.  One write of one line; writes of
// up to 4 KB are never mixed with other writers'.  fopen() blocks while no
// daemon reads the FIFO, so prefer the TCP port where that matters.
function pyhasses_publish_fifo(string $fifo, string $token, string $data): void
{
    $line = json_encode(['to' => $token, 'data' => $data], JSON_THROW_ON_ERROR) . "\n";
    if (@file_put_contents($fifo, $line) !== strlen($line)) {
        throw new RuntimeException("pyhasses: cannot write to the FIFO $fifo");
    }
}

if (PHP_SAPI === 'cli' && realpath($argv[0]) === __FILE__) {
    $token = $argv[1] ?? 'room1';
    $data = $argv[2] ?? 'hello from PHP';
    try {
        if (getenv('PYHASSES_FIFO')) {
            pyhasses_publish_fifo(getenv('PYHASSES_FIFO'), $token, $data);
            echo "written to the FIFO\n";
        } else {
            $ack = pyhasses_publish($token, $data, null, '127.0.0.1', (int) (getenv('PYHASSES_PORT') ?: 8085));
            echo "delivered to {$ack['delivered']} client(s)\n";
        }
    } catch (RuntimeException $e) {
        fwrite(STDERR, $e->getMessage() . "\n");   // one line, no stack trace
        exit(1);
    }
}
